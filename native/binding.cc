// The only file that touches V8: converts JS values, checks every argument again (count, type,
// length against the shapes, 64-bit size products, BLAS int range) and throws TypeError /
// RangeError. Outputs are allocated by the caller, so nothing here allocates JS memory. Nothing
// a caller passes reaches ToLocalChecked/FromJust unchecked: a throwing getter or a Proxy gives a
// TypeError, and every C++ exception from a kernel becomes a JS error.
#include <nan.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "attention.h"
#include "gemm.h"
#include "kernel_path.h"
#include "kvencode.h"
#include "rope.h"
#include "threads.h"
#include "tile.h"
#include "vmath.h"

namespace {

using Args = Nan::NAN_METHOD_ARGS_TYPE;
constexpr int64_t INT_MAX32 = 2147483647;

// A typed array's first element, through Buffer()->Data(): Nan::TypedArrayContents takes a
// BackingStore shared_ptr per argument (atomic reference counts, ~0.2 µs of a small call here).
template <typename T>
T* elements(v8::Local<v8::Value> val) {
  auto arr = val.As<v8::TypedArray>();
  return reinterpret_cast<T*>(static_cast<char*>(arr->Buffer()->Data()) + arr->ByteOffset());
}

// At most n bytes of s, cut at a UTF-8 character boundary.
std::string utf8_prefix(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  while (n > 0 && (s[n] & 0xC0) == 0x80) --n;  // s[n] continues a character: back off to its start
  return s.substr(0, n) + "…";
}

// A caller's string for a message or a name lookup, converted only up to 200 characters (a huge
// string must not make the conversion allocate without bound).
std::string short_string(v8::Local<v8::Value> val) {
  v8::Local<v8::String> str = val.As<v8::String>();
  if (str->Length() > 200) return "<a string of " + std::to_string(str->Length()) + " characters>";
  return *Nan::Utf8String(str);
}

// The property name `key` (a string literal) as an internalized V8 string, made once per isolate:
// building it on every read was most of a small call's cost.
v8::Local<v8::String> key_string(v8::Isolate* isolate, const char* key) {
  thread_local v8::Isolate* owner = nullptr;  // the isolate of this thread's cache
  thread_local std::unordered_map<const char*, v8::Eternal<v8::String>> cache;
  if (owner != isolate) {
    cache.clear();
    owner = isolate;
  }
  auto it = cache.find(key);
  if (it == cache.end()) {
    v8::Local<v8::String> str = v8::String::NewFromUtf8(isolate, key, v8::NewStringType::kInternalized).ToLocalChecked();
    it = cache.emplace(key, v8::Eternal<v8::String>(isolate, str)).first;
  }
  return it->second.Get(isolate);
}

// A shape for error messages ("[B,H,T]=[1,8,16]"), formatted only when a check fails.
struct Shape {
  const char* names;
  int rank;
  int64_t dims[4];
  std::string str() const {
    std::string s = std::string(names) + "=[";
    for (int i = 0; i < rank; ++i) s += (i ? "," : "") + std::to_string(dims[i]);
    return s + "]";
  }
};
Shape shape(const char* names, std::initializer_list<int64_t> dims) {
  Shape s{names, (int)dims.size(), {}};
  std::copy(dims.begin(), dims.end(), s.dims);
  return s;
}

struct Checker {
  const char* fn;
  const Args& info;
  bool failed = false;
  v8::Isolate* const isolate = info.GetIsolate();
  const v8::Local<v8::Context> context = isolate->GetCurrentContext();

  void type_error(const std::string& msg) {
    if (!failed) Nan::ThrowTypeError((std::string(fn) + ": " + msg).c_str());
    failed = true;
  }
  void range_error(const std::string& msg) {
    if (!failed) Nan::ThrowRangeError((std::string(fn) + ": " + msg).c_str());
    failed = true;
  }

  bool count_in(int lo, int hi) {  // exactly lo or exactly hi
    if (info.Length() != lo && info.Length() != hi)
      type_error("expected " + std::to_string(lo) + " or " + std::to_string(hi) + " arguments, got " +
                 std::to_string(info.Length()));
    return !failed;
  }

  bool count(int n) {
    if (info.Length() != n)
      type_error("expected " + std::to_string(n) + " arguments, got " + std::to_string(info.Length()));
    return !failed;
  }

  // An integer-valued number in [lo, hi].
  int64_t integer(v8::Local<v8::Value> val, const char* name, int64_t lo, int64_t hi) {
    if (failed) return 0;
    if (!val->IsNumber()) {
      type_error(std::string(name) + " must be a number, got " + describe(val));
      return 0;
    }
    const double d = Nan::To<double>(val).FromJust();
    if (!std::isfinite(d) || d != std::floor(d) || d < (double)lo || d > (double)hi) {
      range_error(std::string(name) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                  num(d));
      return 0;
    }
    return (int64_t)d;
  }

  double number(v8::Local<v8::Value> val, const char* name, double lo, double hi, bool hi_open) {
    if (failed) return 0;
    if (!val->IsNumber()) {
      type_error(std::string(name) + " must be a number, got " + describe(val));
      return 0;
    }
    const double d = Nan::To<double>(val).FromJust();
    if (!std::isfinite(d) || d < lo || (hi_open ? d >= hi : d > hi)) {
      range_error(std::string(name) + " must be a finite number in [" + num(lo) + ", " + num(hi) + (hi_open ? ")" : "]") +
                  ", got " + num(d));
      return 0;
    }
    return d;
  }

  // obj[key]; a getter that throws becomes a TypeError naming the field (undefined returned).
  v8::Local<v8::Value> field(v8::Local<v8::Object> obj, const char* owner, const char* key) {
    if (failed) return Nan::Undefined();
    std::string why;
    {
      v8::TryCatch trap(isolate);  // the TypeError below is thrown after it has closed
      v8::Local<v8::Value> val;
      if (obj->Get(context, key_string(isolate, key)).ToLocal(&val) && !trap.HasCaught()) return val;
      why = "it threw";
      if (trap.HasCaught() && !trap.Exception().IsEmpty()) {
        Nan::MaybeLocal<v8::String> msg = Nan::To<v8::String>(trap.Exception());
        if (!msg.IsEmpty()) why += ": " + short_string(msg.ToLocalChecked());
      }
    }
    type_error(std::string(owner) + "." + key + " could not be read (" + why + ")");
    return Nan::Undefined();
  }

  // A plain object (not a Proxy, whose traps could run arbitrary code on every read).
  v8::Local<v8::Object> object(int i, const char* name) {
    if (!failed && (!info[i]->IsObject() || info[i]->IsProxy()))
      type_error(std::string(name) + " must be a plain object, got " + describe(info[i]));
    return failed ? Nan::New<v8::Object>() : info[i].As<v8::Object>();
  }

  // Integer fields of a dims argument, each in [lo, 2^31 - 1]: an Int32Array holding them in
  // the order given (the light form: one read instead of a property lookup per field, which
  // was most of a small call's binding cost) or a plain object with those keys.
  struct IntField {
    const char* key;
    int64_t* dst;
    int64_t lo;
  };
  void int_fields(int i, const char* name, std::initializer_list<IntField> fields) {
    if (failed) return;
    v8::Local<v8::Value> val = info[i];
    if (val->IsInt32Array()) {
      auto arr = val.As<v8::Int32Array>();
      if (arr->Length() != fields.size()) {
        std::string keys;
        for (const IntField& f : fields) keys += std::string(keys.empty() ? "" : ",") + f.key;
        return range_error("expected " + std::string(name) + " as an Int32Array [" + keys + "] (" +
                           std::to_string(fields.size()) + " values), got " + std::to_string(arr->Length()));
      }
      const int32_t* x = elements<int32_t>(arr);
      int k = 0;
      for (const IntField& f : fields) {
        const int32_t value = x[k];  // read once: the array may be shared with another thread
        if (value < f.lo)
          return range_error(std::string(name) + "[" + std::to_string(k) + "] (" + f.key + ") must be an integer in [" +
                             std::to_string(f.lo) + ", " + std::to_string(INT_MAX32) + "], got " + std::to_string(value));
        *f.dst = value;
        ++k;
      }
      return;
    }
    if (!val->IsObject() || val->IsProxy())
      return type_error(std::string(name) + " must be an Int32Array or a plain object, got " + describe(val));
    v8::Local<v8::Object> o = val.As<v8::Object>();
    for (const IntField& f : fields) *f.dst = integer(field(o, name, f.key), (std::string(name) + "." + f.key).c_str(), f.lo, INT_MAX32);
  }

  // A Float32Array (or null when nullable) of exactly `len` elements; `shape` names it in errors.
  float* f32(int i, const char* name, int64_t len, const Shape& shape, bool nullable = false) {
    if (failed) return nullptr;
    v8::Local<v8::Value> val = info[i];
    if (nullable && (val->IsNull() || val->IsUndefined())) return nullptr;
    if (!val->IsFloat32Array()) {
      type_error(std::string(name) + " must be a Float32Array" + (nullable ? " or null" : "") + ", got " + describe(val));
      return nullptr;
    }
    auto arr = val.As<v8::Float32Array>();
    if ((int64_t)arr->Length() != len) {
      range_error("expected " + std::string(name) + " " + shape.str() + " (" + std::to_string(len) + " floats), got " +
                  std::to_string(arr->Length()));
      return nullptr;
    }
    return elements<float>(arr);
  }

  // A cache storage array of kv_dtype: Float32Array (f32), Uint16Array (f16, bf16 bits) or
  // Int8Array (i8), of exactly `len` elements.
  const void* storage(int i, const char* name, int64_t len, const Shape& shape, kvs::KvDtype dtype) {
    if (failed) return nullptr;
    if (dtype == kvs::KvDtype::F32) return f32(i, name, len, shape);
    v8::Local<v8::Value> val = info[i];
    const bool i8 = dtype == kvs::KvDtype::I8;
    if (i8 ? !val->IsInt8Array() : !val->IsUint16Array()) {
      type_error(std::string(name) + " must be " + (i8 ? "an Int8Array" : "a Uint16Array") + " for kvDtype '" +
                 dtype_name(dtype) + "', got " + describe(val));
      return nullptr;
    }
    auto arr = val.As<v8::TypedArray>();
    if ((int64_t)arr->Length() != len) {
      range_error("expected " + std::string(name) + " " + shape.str() + " (" + std::to_string(len) + " elements), got " +
                  std::to_string(arr->Length()));
      return nullptr;
    }
    return elements<char>(arr);
  }

  static const char* dtype_name(kvs::KvDtype d) {
    switch (d) {
      case kvs::KvDtype::F16: return "f16";
      case kvs::KvDtype::BF16: return "bf16";
      case kvs::KvDtype::I8: return "i8";
      default: return "f32";
    }
  }

  uint8_t* u8(int i, const char* name, int64_t len, const Shape& shape) {
    if (failed) return nullptr;
    v8::Local<v8::Value> val = info[i];
    if (val->IsNull() || val->IsUndefined()) return nullptr;
    if (!val->IsUint8Array()) {
      type_error(std::string(name) + " must be a Uint8Array or null, got " + describe(val));
      return nullptr;
    }
    auto arr = val.As<v8::Uint8Array>();
    if ((int64_t)arr->Length() != len) {
      range_error("expected " + std::string(name) + " " + shape.str() + " (" + std::to_string(len) + " bytes), got " +
                  std::to_string(arr->Length()));
      return nullptr;
    }
    return elements<uint8_t>(arr);
  }

  // a * b * ..., failing when the product leaves int64 or the element count a typed array may have.
  int64_t product(std::initializer_list<int64_t> dims, const char* what) {
    int64_t p = 1;
    bool over = false;
    for (int64_t d : dims) over = over || __builtin_mul_overflow(p, d, &p) || p > ((int64_t)1 << 32);
    if (!over) return p;
    std::string shape, total;
    double n = 1;
    for (int64_t d : dims) {
      shape += (shape.empty() ? "" : ",") + std::to_string(d);
      n *= (double)d;
    }
    range_error(std::string(what) + " [" + shape + "] has " + num(n) + " elements, more than a typed array can hold (2^32)");
    return 0;
  }

  // A number as JS prints it where it matters here (NaN, Infinity; integers without exponent).
  static std::string num(double d) {
    if (std::isnan(d)) return "NaN";
    if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
    char buf[32];
    snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
  }
  static std::string describe(v8::Local<v8::Value> val) {
    if (val->IsUndefined()) return "undefined";
    if (val->IsNull()) return "null";
    if (val->IsFloat32Array()) return "Float32Array";
    if (val->IsFloat64Array()) return "Float64Array";
    if (val->IsUint16Array()) return "Uint16Array";
    if (val->IsInt8Array()) return "Int8Array";
    if (val->IsUint8Array()) return "Uint8Array";
    if (val->IsTypedArray()) return "a typed array of another type";
    if (val->IsArray()) return "Array";
    if (val->IsNumber()) return "number " + num(Nan::To<double>(val).FromJust());
    if (val->IsString()) return "string";
    if (val->IsBoolean()) return "boolean";
    if (val->IsFunction()) return "function";
    if (val->IsProxy()) return "a Proxy";
    if (val->IsBigInt()) return "bigint";
    if (val->IsSymbol()) return "symbol";
    if (val->IsDataView()) return "DataView";
    if (val->IsArrayBuffer()) return "ArrayBuffer";
    if (val->IsSharedArrayBuffer()) return "SharedArrayBuffer";
    return "a plain object";
  }
};

kvs::AttnDims read_dims(Checker& c, int i) {
  kvs::AttnDims d{};
  c.int_fields(i, "dims", {{"B", &d.B, 1}, {"H", &d.H, 1}, {"Hkv", &d.H_kv, 1}, {"T", &d.T, 1}, {"S", &d.S, 0},
                           {"sCap", &d.s_cap, 0}, {"dK", &d.d_k, 1}, {"dV", &d.d_v, 1}});
  if (c.failed) return d;
  if (d.H % d.H_kv != 0)
    c.range_error("dims.Hkv must divide dims.H, got H=" + std::to_string(d.H) + ", Hkv=" + std::to_string(d.H_kv));
  else if (d.s_cap < d.S)
    c.range_error("dims.sCap must be >= dims.S, got sCap=" + std::to_string(d.s_cap) + ", S=" + std::to_string(d.S));
  return d;
}

// opts.kvDtype: the cache storage type, 'f32' (or absent), 'f16', 'bf16' or 'i8' (kvstore.h).
kvs::KvDtype read_kv_dtype(Checker& c, v8::Local<v8::Object> obj) {
  v8::Local<v8::Value> val = c.field(obj, "opts", "kvDtype");
  if (c.failed || val->IsUndefined()) return kvs::KvDtype::F32;
  if (!val->IsString()) {
    c.type_error("opts.kvDtype must be a string, got " + Checker::describe(val));
    return kvs::KvDtype::F32;
  }
  const std::string name = short_string(val);
  for (kvs::KvDtype d : {kvs::KvDtype::F32, kvs::KvDtype::F16, kvs::KvDtype::BF16, kvs::KvDtype::I8})
    if (name == Checker::dtype_name(d)) return d;
  c.range_error("opts.kvDtype must be one of 'f32', 'f16', 'bf16', 'i8', got '" + utf8_prefix(name, 64) + "'");
  return kvs::KvDtype::F32;
}

// Copies of the array options (ALiBi slopes, ragged ranges and query offsets); with_arrays points
// an AttnOpts at them.
struct OptArrays {
  std::vector<float> alibi;
  std::vector<int32_t> kv_ranges, q_offsets;
};

kvs::AttnOpts with_arrays(kvs::AttnOpts o, const OptArrays& a) {
  o.alibi = a.alibi.empty() ? nullptr : a.alibi.data();
  o.kv_ranges = a.kv_ranges.empty() ? nullptr : a.kv_ranges.data();
  o.q_offsets = a.q_offsets.empty() ? nullptr : a.q_offsets.data();
  return o;
}

// opts[key]: absent/null, or a typed array (Float32Array for float, Int32Array for int32) of n
// elements, copied into out.
template <typename T>
void read_opt_array(Checker& c, v8::Local<v8::Object> obj, const char* key, const char* shape_names,
                    const std::string& dims, int64_t n, std::vector<T>& out) {
  v8::Local<v8::Value> val = c.field(obj, "opts", key);
  if (c.failed || val->IsNullOrUndefined()) return;
  constexpr bool is_float = std::is_same<T, float>::value;
  const char* type = is_float ? "Float32Array" : "Int32Array";
  if (is_float ? !val->IsFloat32Array() : !val->IsInt32Array())
    return c.type_error(std::string("opts.") + key + " must be " + (is_float ? "a " : "an ") + type + " or null, got " +
                        Checker::describe(val));
  const int64_t len = (int64_t)val.As<v8::TypedArray>()->Length();
  if (len != n)
    return c.range_error("expected opts." + std::string(key) + " " + shape_names + "=[" + dims + "] (" +
                         std::to_string(n) + " elements), got " + std::to_string(len));
  const T* data = elements<T>(val);
  out.assign(data, data + n);
}

// arrays receives the array options for a call with B batch rows and H heads (B_H).
kvs::AttnOpts read_opts(Checker& c, int i, kvs::KvDtype* kv_dtype = nullptr, std::pair<int64_t, int64_t> B_H = {0, 0},
                        OptArrays* arrays = nullptr) {
  kvs::AttnOpts o{};
  v8::Local<v8::Object> obj = c.object(i, "opts");
  if (c.failed) return o;
  if (kv_dtype) *kv_dtype = read_kv_dtype(c, obj);
  o.scale = (float)c.number(c.field(obj, "opts", "scale"), "opts.scale", -3.4e38, 3.4e38, false);
  v8::Local<v8::Value> causal = c.field(obj, "opts", "causal");
  if (!c.failed && !causal->IsBoolean()) c.type_error("opts.causal must be a boolean, got " + Checker::describe(causal));
  o.causal = !c.failed && Nan::To<bool>(causal).FromJust();
  o.q_offset = c.integer(c.field(obj, "opts", "qOffset"), "opts.qOffset", -INT_MAX32, INT_MAX32);
  o.s_offset = c.integer(c.field(obj, "opts", "sOffset"), "opts.sOffset", 0, INT_MAX32);
  o.dropout_p = (float)c.number(c.field(obj, "opts", "dropoutP"), "opts.dropoutP", 0.0, 1.0, true);
  o.seed = (uint64_t)c.integer(c.field(obj, "opts", "seed"), "opts.seed", 0, ((int64_t)1 << 53) - 1);
  // Score modifiers (attention.h), all optional.
  v8::Local<v8::Value> cap = c.field(obj, "opts", "softcap");
  if (!c.failed && !cap->IsUndefined()) o.softcap = (float)c.number(cap, "opts.softcap", 0.0, 3.4e38, false);
  v8::Local<v8::Value> window = c.field(obj, "opts", "window");
  if (!c.failed && !window->IsUndefined()) o.window = c.integer(window, "opts.window", 0, INT_MAX32);
  if (arrays) {
    // Copied: an async fold must not read a buffer JS may change meanwhile.
    read_opt_array(c, obj, "alibi", "[H]", std::to_string(B_H.second), B_H.second, arrays->alibi);
    for (float x : arrays->alibi)
      if (!std::isfinite(x)) c.range_error("opts.alibi slopes must be finite, got " + Checker::num(x));
    read_opt_array(c, obj, "kvRanges", "[B,2]", std::to_string(B_H.first) + ",2", 2 * B_H.first, arrays->kv_ranges);
    for (size_t i = 0; i < arrays->kv_ranges.size(); i += 2)
      if (arrays->kv_ranges[i] < 0 || arrays->kv_ranges[i] > arrays->kv_ranges[i + 1])
        c.range_error("opts.kvRanges row " + std::to_string(i / 2) + " must be 0 <= start <= end, got [" +
                      std::to_string(arrays->kv_ranges[i]) + ", " + std::to_string(arrays->kv_ranges[i + 1]) + ")");
    read_opt_array(c, obj, "qOffsets", "[B]", std::to_string(B_H.first), B_H.first, arrays->q_offsets);
  }
  return o;
}

// Runs a kernel; no C++ exception crosses into V8: allocation failures and refused scratch sizes
// become RangeErrors, anything else an Error, all with the function's name.
std::string kernel_error(const std::exception_ptr& e, bool* range) {
  *range = true;
  try {
    std::rethrow_exception(e);
  } catch (const std::bad_alloc&) {
    return "out of memory";
  } catch (const kvs::ScratchError& x) {
    return x.what();
  } catch (const std::system_error& x) {
    return std::string("could not start threads: ") + x.what();
  } catch (const std::exception& x) {
    *range = false;
    return std::string("internal error: ") + x.what();
  } catch (...) {
    *range = false;
    return "internal error";
  }
}

template <typename F>
void guarded(Checker& c, F&& f) {
  try {
    f();
  } catch (...) {
    bool range;
    const std::string msg = kernel_error(std::current_exception(), &range);
    if (range) return c.range_error(msg);
    Nan::ThrowError((std::string(c.fn) + ": " + msg).c_str());
    c.failed = true;
  }
}

// The checked arguments of attnUpdate / attnUpdateAsync.
struct UpdateArgs {
  kvs::AttnDims d;
  kvs::AttnOpts o;
  OptArrays arrays;
  std::vector<int32_t> block_table;  // a copy: the async fold must not read a table JS may change
  const float* q;
  kvs::KvStore kv;
  float *m, *l, *acc;

  // kv pointing at this object's own block table (UpdateArgs is copied into the async worker).
  kvs::KvStore store() const {
    kvs::KvStore s = kv;
    s.pages.block_table = block_table.empty() ? nullptr : block_table.data();
    return s;
  }
};

// Whether arguments i and i + 1 were passed (i < 0: the call has no scale slots).
bool info_has(Checker& c, int i) { return i >= 0 && c.info.Length() >= i + 2; }

// The key and value scales of int8 storage at info[i], info[i + 1] (null otherwise; both are
// refused when given for other storage, so a caller cannot believe they were applied).
bool read_scales(Checker& c, int i, const kvs::AttnDims& d, const std::array<int64_t, 3>& rows, kvs::KvStore& kv) {
  const bool given = info_has(c, i) && !(c.info[i]->IsNullOrUndefined() && c.info[i + 1]->IsNullOrUndefined());
  if (kv.dtype != kvs::KvDtype::I8) {
    if (given)
      c.type_error("kScale and vScale must be null unless opts.kvDtype is 'i8', got " + Checker::describe(c.info[i]) +
                   " and " + Checker::describe(c.info[i + 1]));
    return !c.failed;
  }
  if (!info_has(c, i)) {
    c.type_error("int8 storage (opts.kvDtype 'i8') needs kScale and vScale arguments");
    return false;
  }
  const int64_t gk = kvs::q8_groups(d.d_k), gv = kvs::q8_groups(d.d_v);
  const int64_t nk = c.product({rows[0], rows[1], rows[2], gk}, "kScale"), nv = c.product({rows[0], rows[1], rows[2], gv}, "vScale");
  const bool paged = kv.pages.block_table;
  kv.k_scale = c.f32(i, "kScale", nk, shape(paged ? "[pages,H_kv,pageSize,ceil(d_k/32)]" : "[B,H_kv,S_cap,ceil(d_k/32)]", {rows[0], rows[1], rows[2], gk}));
  kv.v_scale = c.f32(i + 1, "vScale", nv, shape(paged ? "[pages,H_kv,pageSize,ceil(d_v/32)]" : "[B,H_kv,S_cap,ceil(d_v/32)]", {rows[0], rows[1], rows[2], gv}));
  return !c.failed;
}

// Paged storage (kvstore.h): opts.pageSize and opts.blockTable [B, sCap / pageSize]; k and v then
// hold whole pages [pages, H_kv, pageSize, d], the page count taken from k's length. Every table
// entry that covers keys [0, S) must name a page. Returns the storage's leading dims: [B, H_kv,
// S_cap] or [pages, H_kv, pageSize].
bool read_pages(Checker& c, UpdateArgs& a, std::array<int64_t, 3>& rows) {
  const kvs::AttnDims& d = a.d;
  rows = {d.B, d.H_kv, d.s_cap};
  v8::Local<v8::Object> obj = c.info[1].As<v8::Object>();
  v8::Local<v8::Value> page_v = c.field(obj, "opts", "pageSize");
  if (c.failed || page_v->IsNullOrUndefined()) {
    if (!c.failed && !c.field(obj, "opts", "blockTable")->IsNullOrUndefined())
      c.type_error("opts.blockTable needs opts.pageSize");
    return !c.failed;
  }
  kvs::KvPages& p = a.kv.pages;
  p.page = c.integer(page_v, "opts.pageSize", 1, INT_MAX32);
  if (!c.failed && (d.s_cap == 0 || d.s_cap % p.page != 0))
    c.range_error("dims.sCap must be a positive multiple of opts.pageSize with paged storage, got sCap=" +
                  std::to_string(d.s_cap) + ", pageSize=" + std::to_string(p.page));
  p.max_blocks = c.failed ? 0 : d.s_cap / p.page;
  p.H_kv = d.H_kv;
  read_opt_array(c, obj, "blockTable", "[B,sCap/pageSize]", std::to_string(d.B) + "," + std::to_string(p.max_blocks),
                 d.B * p.max_blocks, a.block_table);
  if (!c.failed && a.block_table.empty()) c.type_error("opts.pageSize needs opts.blockTable");
  if (c.failed) return false;
  const int64_t per_page = c.product({d.H_kv, p.page, d.d_k}, "a page of k");
  if (c.failed) return false;
  const int64_t k_len = c.info[3]->IsTypedArray() ? (int64_t)c.info[3].As<v8::TypedArray>()->Length() : 0;
  if (k_len == 0 || k_len % per_page != 0)
    return c.range_error("expected k whole pages [pages,H_kv,pageSize,d_k]=[*," + std::to_string(d.H_kv) + "," +
                         std::to_string(p.page) + "," + std::to_string(d.d_k) + "] (a positive multiple of " +
                         std::to_string(per_page) + " elements), got " + std::to_string(k_len)), false;
  const int64_t pages = k_len / per_page, used = (d.S + p.page - 1) / p.page;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t j = 0; j < used; ++j) {
      const int32_t e = a.block_table[b * p.max_blocks + j];
      if (e < 0 || e >= pages)
        return c.range_error("opts.blockTable[" + std::to_string(b) + "," + std::to_string(j) + "] must name a page in [0, " +
                             std::to_string(pages) + "), got " + std::to_string(e)), false;
    }
  p.block_table = a.block_table.data();
  rows = {pages, d.H_kv, p.page};
  return true;
}

// opts.sStart (default 0): the fold reads positions [sStart, sStart + S) of each head's storage
// (a ring buffer's parts are read in place). The storage pointers move by sStart rows, so the
// kernels, which index row s of head bh at (bh · sCap + s), see the part as rows [0, S).
// opts.sStart, checked against the dims and the layout: read before any array pointer is
// taken, since reading it may run a caller's getter (which could detach a buffer).
int64_t read_s_start(Checker& c, const UpdateArgs& a) {
  v8::Local<v8::Value> val = c.field(c.info[1].As<v8::Object>(), "opts", "sStart");
  if (c.failed || val->IsUndefined()) return 0;
  const int64_t s0 = c.integer(val, "opts.sStart", 0, INT_MAX32);
  if (c.failed || s0 == 0) return 0;
  if (a.kv.pages.block_table) return c.type_error("opts.sStart must be 0 with paged storage (the block table places rows), got " + std::to_string(s0)), 0;
  if (s0 + a.d.S > a.d.s_cap)
    return c.range_error("opts.sStart + dims.S must be <= dims.sCap, got sStart=" + std::to_string(s0) + ", S=" +
                         std::to_string(a.d.S) + ", sCap=" + std::to_string(a.d.s_cap)), 0;
  return s0;
}

// The storage pointers moved to slot s0 (a ring buffer's part read in place).
void apply_s_start(UpdateArgs& a, int64_t s0) {
  const int64_t elem = a.kv.dtype == kvs::KvDtype::F32 ? 4 : a.kv.dtype == kvs::KvDtype::I8 ? 1 : 2;
  a.kv.k = static_cast<const char*>(a.kv.k) + s0 * a.d.d_k * elem;
  a.kv.v = static_cast<const char*>(a.kv.v) + s0 * a.d.d_v * elem;
  if (a.kv.k_scale) a.kv.k_scale += s0 * kvs::q8_groups(a.d.d_k);
  if (a.kv.v_scale) a.kv.v_scale += s0 * kvs::q8_groups(a.d.d_v);
}

bool read_update_args(Checker& c, UpdateArgs& a, int scales_at) {
  a.d = read_dims(c, 0);
  a.kv = kvs::KvStore{};
  a.o = read_opts(c, 1, &a.kv.dtype, {a.d.B, a.d.H}, &a.arrays);
  std::array<int64_t, 3> rows{};
  if (c.failed || !read_pages(c, a, rows)) return false;
  const int64_t s0 = read_s_start(c, a);
  if (c.failed) return false;
  const kvs::AttnDims& d = a.d;
  const bool paged = a.kv.pages.block_table;
  const char* k_names = paged ? "[pages,H_kv,pageSize,d_k]" : "[B,H_kv,S_cap,d_k]";
  const char* v_names = paged ? "[pages,H_kv,pageSize,d_v]" : "[B,H_kv,S_cap,d_v]";
  const int64_t nq = c.product({d.B, d.H, d.T, d.d_k}, "q");
  const int64_t nk = c.product({rows[0], rows[1], rows[2], d.d_k}, "k");
  const int64_t nv = c.product({rows[0], rows[1], rows[2], d.d_v}, "v");
  const int64_t nr = c.product({d.B, d.H, d.T}, "m");
  const int64_t na = c.product({d.B, d.H, d.T, d.d_v}, "acc");
  a.q = c.f32(2, "q", nq, shape("[B,H,T,d_k]", {d.B, d.H, d.T, d.d_k}));
  a.kv.k = c.storage(3, "k", nk, shape(k_names, {rows[0], rows[1], rows[2], d.d_k}), a.kv.dtype);
  a.kv.v = c.storage(4, "v", nv, shape(v_names, {rows[0], rows[1], rows[2], d.d_v}), a.kv.dtype);
  a.m = c.f32(5, "m", nr, shape("[B,H,T]", {d.B, d.H, d.T}));
  a.l = c.f32(6, "l", nr, shape("[B,H,T]", {d.B, d.H, d.T}));
  a.acc = c.f32(7, "acc", na, shape("[B,H,T,d_v]", {d.B, d.H, d.T, d.d_v}));
  if (c.failed || !read_scales(c, scales_at, d, rows, a.kv)) return false;
  apply_s_start(a, s0);
  return true;
}

// attnUpdate(dims, opts, q, k, v, m, l, acc[, kScale, vScale]): folds keys [0, S) into the state
// in place; k and v are cache storage of opts.kvDtype (scales for int8).
NAN_METHOD(AttnUpdate) {
  Checker c{"attnUpdate", info};
  UpdateArgs a;
  if (!c.count_in(8, 10) || !read_update_args(c, a, 8)) return;
  guarded(c, [&] { kvs::attn_update(a.d, with_arrays(a.o, a.arrays), a.q, a.store(), a.m, a.l, a.acc); });
}

// The async folds of one isolate still queued or running. Node does not wait for nan's
// uv_queue_work requests when it tears an isolate down (worker.terminate(), process.exit()), and
// closing a loop with one in flight aborts the process; the isolate's cleanup hook therefore runs
// the loop until every fold has completed. Only the isolate's own thread touches it.
struct AsyncFolds {
  uv_loop_t* loop;
  int inflight = 0;
};
thread_local AsyncFolds* t_folds = nullptr;

void drain_async_folds(void* arg) {
  auto* folds = static_cast<AsyncFolds*>(arg);
  while (folds->inflight > 0) uv_run(folds->loop, UV_RUN_ONCE);
  if (t_folds == folds) t_folds = nullptr;
  delete folds;
}

// Runs attn_update on a libuv worker thread. It holds the arrays' backing stores, so their
// memory stays valid even if JS transfers or detaches a buffer meanwhile; shared and resizable
// buffers are refused up front (another thread could shrink or race on them).
class UpdateWorker : public Nan::AsyncWorker {
 public:
  UpdateWorker(Nan::Callback* callback, const UpdateArgs& a, std::shared_ptr<v8::BackingStore> (&stores)[8])
      : Nan::AsyncWorker(callback, "kvstream:attnUpdateAsync"), a_(a), folds_(t_folds) {
    for (int i = 0; i < 8; ++i) stores_[i] = std::move(stores[i]);
    if (folds_) ++folds_->inflight;
  }
  ~UpdateWorker() override {
    if (folds_) --folds_->inflight;
  }
  void Execute() override {
    try {
      kvs::attn_update(a_.d, with_arrays(a_.o, a_.arrays), a_.q, a_.store(), a_.m, a_.l, a_.acc);
    } catch (...) {
      bool range;
      SetErrorMessage(("attnUpdateAsync: " + kernel_error(std::current_exception(), &range)).c_str());
    }
  }

 private:
  UpdateArgs a_;
  AsyncFolds* folds_;
  std::shared_ptr<v8::BackingStore> stores_[8];
};

// The backing store of the typed array info[i] (already checked), or null after a TypeError for
// a shared or resizable buffer.
std::shared_ptr<v8::BackingStore> pinned_store(Checker& c, int i, const char* name) {
  if (c.failed) return nullptr;
  v8::Local<v8::ArrayBuffer> buf = c.info[i].As<v8::TypedArray>()->Buffer();
  std::shared_ptr<v8::BackingStore> store = buf->GetBackingStore();
  if (store->IsShared() || store->IsResizableByUserJavaScript()) {
    c.type_error(std::string(name) + " must be backed by a plain ArrayBuffer, got a " +
                 (store->IsShared() ? "SharedArrayBuffer" : "resizable ArrayBuffer"));
    return nullptr;
  }
  return store;
}

// attnUpdateAsync(dims, opts, q, k, v, m, l, acc[, kScale, vScale], callback(err)): attnUpdate
// off the event loop. Arguments are checked (and bad ones thrown) synchronously.
NAN_METHOD(AttnUpdateAsync) {
  Checker c{"attnUpdateAsync", info};
  UpdateArgs a;
  if (!c.count_in(9, 11)) return;
  const int cb = info.Length() - 1;
  if (!info[cb]->IsFunction()) return c.type_error("callback must be a function, got " + Checker::describe(info[cb]));
  if (!read_update_args(c, a, cb == 10 ? 8 : -1)) return;
  const char* names[] = {"q", "k", "v", "m", "l", "acc", "kScale", "vScale"};
  std::shared_ptr<v8::BackingStore> stores[8];
  for (int i = 0; i < 8; ++i)
    if (i < 6 || a.kv.dtype == kvs::KvDtype::I8) stores[i] = pinned_store(c, 2 + i, names[i]);
  if (c.failed) return;
  Nan::AsyncQueueWorker(new UpdateWorker(new Nan::Callback(info[cb].As<v8::Function>()), a, stores));
}

// attnMerge(rows, dV, m1, l1, acc1, m2, l2, acc2): state 1 <- state 1 ∪ state 2.
NAN_METHOD(AttnMerge) {
  Checker c{"attnMerge", info};
  if (!c.count(8)) return;
  const int64_t rows = c.integer(info[0], "rows", 1, INT_MAX32);
  const int64_t d_v = c.integer(info[1], "dV", 1, INT_MAX32);
  const int64_t na = c.product({rows, d_v}, "acc");
  if (c.failed) return;
  const Shape rs = shape("[rows]", {rows}), as = shape("[rows,d_v]", {rows, d_v});
  float* m1 = c.f32(2, "m1", rows, rs);
  float* l1 = c.f32(3, "l1", rows, rs);
  float* acc1 = c.f32(4, "acc1", na, as);
  const float* m2 = c.f32(5, "m2", rows, rs);
  const float* l2 = c.f32(6, "l2", rows, rs);
  const float* acc2 = c.f32(7, "acc2", na, as);
  if (c.failed) return;
  guarded(c, [&] { kvs::attn_merge(rows, d_v, m1, l1, acc1, m2, l2, acc2); });
}

// attnFinalize(rows, dV, m, l, acc, out, lse[, sinks, T]): with sinks [H] (rows [B,H,T]), one
// learnable sink logit per head joins each row's softmax denominator.
NAN_METHOD(AttnFinalize) {
  Checker c{"attnFinalize", info};
  if (!c.count_in(7, 9)) return;
  const int64_t rows = c.integer(info[0], "rows", 1, INT_MAX32);
  const int64_t d_v = c.integer(info[1], "dV", 1, INT_MAX32);
  const int64_t na = c.product({rows, d_v}, "acc");
  if (c.failed) return;
  const Shape rs = shape("[rows]", {rows}), as = shape("[rows,d_v]", {rows, d_v});
  const float* m = c.f32(2, "m", rows, rs);
  const float* l = c.f32(3, "l", rows, rs);
  const float* acc = c.f32(4, "acc", na, as);
  float* out = c.f32(5, "out", na, as);
  float* lse = c.f32(6, "lse", rows, rs);
  kvs::Sinks sinks;
  if (!c.failed && info.Length() == 9 && !info[7]->IsNullOrUndefined()) {
    // sinks [H] and T: the rows are [B, H, T].
    if (!info[7]->IsFloat32Array()) return c.type_error("sinks must be a Float32Array or null, got " + Checker::describe(info[7]));
    sinks.H = info[7].As<v8::Float32Array>()->Length();
    sinks.T = c.integer(info[8], "T", 1, INT_MAX32);
    if (!c.failed && (sinks.H == 0 || rows % (sinks.H * sinks.T) != 0))
      return c.range_error("rows must be B·H·T for sinks [H]=[" + std::to_string(sinks.H) + "] and T=" +
                           std::to_string(sinks.T) + ", got rows=" + std::to_string(rows));
    sinks.logit = c.f32(7, "sinks", sinks.H, shape("[H]", {sinks.H}));
  }
  if (c.failed) return;
  guarded(c, [&] { kvs::attn_finalize(rows, d_v, m, l, acc, out, lse, sinks); });
}

// attnProbs(dims, opts, q, k, lse, probs | null, keep | null[, kScale]): k is cache storage of
// opts.kvDtype.
NAN_METHOD(AttnProbs) {
  Checker c{"attnProbs", info};
  if (!c.count_in(7, 8)) return;
  const kvs::AttnDims d = read_dims(c, 0);
  kvs::KvStore kv{};
  OptArrays arrays;
  const kvs::AttnOpts o = read_opts(c, 1, &kv.dtype, {d.B, d.H}, &arrays);
  if (!c.failed && !c.field(info[1].As<v8::Object>(), "opts", "pageSize")->IsNullOrUndefined())
    return c.type_error("paged storage (opts.pageSize) is read by attnUpdate only; pass contiguous keys");
  if (c.failed) return;
  const int64_t nq = c.product({d.B, d.H, d.T, d.d_k}, "q");
  const int64_t nk = c.product({d.B, d.H_kv, d.s_cap, d.d_k}, "k");
  const int64_t nr = c.product({d.B, d.H, d.T}, "lse");
  const int64_t np = c.product({d.B, d.H, d.T, d.S}, "probs");
  const float* q = c.f32(2, "q", nq, shape("[B,H,T,d_k]", {d.B, d.H, d.T, d.d_k}));
  kv.k = c.storage(3, "k", nk, shape("[B,H_kv,S_cap,d_k]", {d.B, d.H_kv, d.s_cap, d.d_k}), kv.dtype);
  const float* lse = c.f32(4, "lse", nr, shape("[B,H,T]", {d.B, d.H, d.T}));
  float* probs = c.f32(5, "probs", np, shape("[B,H,T,S]", {d.B, d.H, d.T, d.S}), true);
  uint8_t* keep = c.u8(6, "keep", np, shape("[B,H,T,S]", {d.B, d.H, d.T, d.S}));
  if (kv.dtype == kvs::KvDtype::I8) {
    const int64_t g = kvs::q8_groups(d.d_k);
    const int64_t ns = c.product({d.B, d.H_kv, d.s_cap, g}, "kScale");
    if (!c.failed && info.Length() < 8) return c.type_error("int8 storage (opts.kvDtype 'i8') needs a kScale argument");
    kv.k_scale = c.f32(7, "kScale", ns, shape("[B,H_kv,S_cap,ceil(d_k/32)]", {d.B, d.H_kv, d.s_cap, g}));
  } else if (!c.failed && info.Length() == 8 && !info[7]->IsNullOrUndefined()) {
    c.type_error("kScale must be null unless opts.kvDtype is 'i8', got " + Checker::describe(info[7]));
  }
  if (c.failed) return;
  guarded(c, [&] { kvs::attn_probs(d, with_arrays(o, arrays), q, kv, lse, probs, keep); });
}

// mhaForward(dims, opts, xQ, xKv, wQ, bQ, wK, bK, wV, bV, wO, bO, y, lse): the whole module,
// no cache; dims {B, T, S, dModel, dKvIn, dOut, H, Hkv, dK, dV} or an Int32Array of them in that
// order; biases may be null.
NAN_METHOD(MhaForward) {
  Checker c{"mhaForward", info};
  if (!c.count(14)) return;
  kvs::MhaDims d{};
  c.int_fields(0, "dims", {{"B", &d.B, 1}, {"T", &d.T, 1}, {"S", &d.S, 1}, {"dModel", &d.d_model, 1}, {"dKvIn", &d.d_kv_in, 1},
                           {"dOut", &d.d_out, 1}, {"H", &d.H, 1}, {"Hkv", &d.H_kv, 1}, {"dK", &d.d_k, 1}, {"dV", &d.d_v, 1}});
  if (c.failed) return;
  if (d.H % d.H_kv != 0)
    return c.range_error("dims.Hkv must divide dims.H, got H=" + std::to_string(d.H) + ", Hkv=" + std::to_string(d.H_kv));
  OptArrays arrays;
  const kvs::AttnOpts opts = read_opts(c, 1, nullptr, {d.B, d.H}, &arrays);
  const int64_t n_xq = c.product({d.B, d.T, d.d_model}, "x_q"), n_xkv = c.product({d.B, d.S, d.d_kv_in}, "x_kv");
  const int64_t n_wq = c.product({d.d_model, d.H, d.d_k}, "w_q"), n_wk = c.product({d.d_kv_in, d.H_kv, d.d_k}, "w_k");
  const int64_t n_wv = c.product({d.d_kv_in, d.H_kv, d.d_v}, "w_v"), n_wo = c.product({d.H, d.d_v, d.d_out}, "w_o");
  const int64_t n_y = c.product({d.B, d.T, d.d_out}, "y"), n_lse = c.product({d.B, d.H, d.T}, "lse");
  c.product({d.B, d.H, d.T, std::max(d.d_k, d.d_v)}, "q");
  c.product({d.B, d.H_kv, d.S, std::max(d.d_k, d.d_v)}, "k");
  if (c.failed) return;
  kvs::MhaWeights w{};
  const float* x_q = c.f32(2, "x_q", n_xq, shape("[B,T,d_model]", {d.B, d.T, d.d_model}));
  const float* x_kv = c.f32(3, "x_kv", n_xkv, shape("[B,S,d_kv_in]", {d.B, d.S, d.d_kv_in}));
  w.w_q = c.f32(4, "w_q", n_wq, shape("[d_model,H*d_k]", {d.d_model, d.H * d.d_k}));
  w.b_q = c.f32(5, "b_q", d.H * d.d_k, shape("[H*d_k]", {d.H * d.d_k}), true);
  w.w_k = c.f32(6, "w_k", n_wk, shape("[d_kv_in,H_kv*d_k]", {d.d_kv_in, d.H_kv * d.d_k}));
  w.b_k = c.f32(7, "b_k", d.H_kv * d.d_k, shape("[H_kv*d_k]", {d.H_kv * d.d_k}), true);
  w.w_v = c.f32(8, "w_v", n_wv, shape("[d_kv_in,H_kv*d_v]", {d.d_kv_in, d.H_kv * d.d_v}));
  w.b_v = c.f32(9, "b_v", d.H_kv * d.d_v, shape("[H_kv*d_v]", {d.H_kv * d.d_v}), true);
  w.w_o = c.f32(10, "w_o", n_wo, shape("[H*d_v,d_out]", {d.H * d.d_v, d.d_out}));
  w.b_o = c.f32(11, "b_o", d.d_out, shape("[d_out]", {d.d_out}), true);
  float* y = c.f32(12, "y", n_y, shape("[B,T,d_out]", {d.B, d.T, d.d_out}));
  float* lse = c.f32(13, "lse", n_lse, shape("[B,H,T]", {d.B, d.H, d.T}));
  if (c.failed) return;
  guarded(c, [&] { kvs::mha_forward(d, with_arrays(opts, arrays), w, x_q, x_kv, y, lse); });
}

// projectHeads(x, w, b | null, out, B, T, K, heads, d): x [B,T,K] · w [K,heads·d] + b -> out [B,heads,T,d]
NAN_METHOD(ProjectHeads) {
  Checker c{"projectHeads", info};
  if (!c.count(9)) return;
  const int64_t B = c.integer(info[4], "B", 1, INT_MAX32), T = c.integer(info[5], "T", 1, INT_MAX32);
  const int64_t K = c.integer(info[6], "K", 1, INT_MAX32), heads = c.integer(info[7], "heads", 1, INT_MAX32);
  const int64_t d = c.integer(info[8], "d", 1, INT_MAX32);
  const int64_t nx = c.product({B, T, K}, "x"), nw = c.product({K, heads, d}, "w"), no = c.product({B, heads, T, d}, "out");
  if (c.failed) return;
  const float* x = c.f32(0, "x", nx, shape("[B,T,K]", {B, T, K}));
  const float* w = c.f32(1, "w", nw, shape("[K,heads*d]", {K, heads * d}));
  const float* b = c.f32(2, "b", heads * d, shape("[heads*d]", {heads * d}), true);
  float* out = c.f32(3, "out", no, shape("[B,heads,T,d]", {B, heads, T, d}));
  if (c.failed) return;
  guarded(c, [&] { kvs::project_heads(B, T, K, heads, d, x, w, b, out); });
}

// mergeProject(o, w, b | null, y, B, heads, T, d, N): concat_h o [B,heads,T,d] · w [heads·d,N] + b -> y [B,T,N]
NAN_METHOD(MergeProject) {
  Checker c{"mergeProject", info};
  if (!c.count(9)) return;
  const int64_t B = c.integer(info[4], "B", 1, INT_MAX32), heads = c.integer(info[5], "heads", 1, INT_MAX32);
  const int64_t T = c.integer(info[6], "T", 1, INT_MAX32), d = c.integer(info[7], "d", 1, INT_MAX32);
  const int64_t N = c.integer(info[8], "N", 1, INT_MAX32);
  const int64_t no = c.product({B, heads, T, d}, "o"), nw = c.product({heads, d, N}, "w"), ny = c.product({B, T, N}, "y");
  if (c.failed) return;
  const float* o = c.f32(0, "o", no, shape("[B,heads,T,d]", {B, heads, T, d}));
  const float* w = c.f32(1, "w", nw, shape("[heads*d,N]", {heads * d, N}));
  const float* b = c.f32(2, "b", N, shape("[N]", {N}), true);
  float* y = c.f32(3, "y", ny, shape("[B,T,N]", {B, T, N}));
  if (c.failed) return;
  guarded(c, [&] { kvs::merge_project(B, heads, T, d, N, o, w, b, y); });
}

// linear(x, w, b | null, y, M, K, N): y [M,N] = x [M,K] · w [K,N] + b [N]
NAN_METHOD(Linear) {
  Checker c{"linear", info};
  if (!c.count(7)) return;
  const int64_t M = c.integer(info[4], "M", 1, INT_MAX32);
  const int64_t K = c.integer(info[5], "K", 1, INT_MAX32);
  const int64_t N = c.integer(info[6], "N", 1, INT_MAX32);
  if (c.failed) return;
  const int64_t nx = c.product({M, K}, "x"), nw = c.product({K, N}, "w"), ny = c.product({M, N}, "y");
  const float* x = c.f32(0, "x", nx, shape("[M,K]", {M, K}));
  const float* w = c.f32(1, "w", nw, shape("[K,N]", {K, N}));
  const float* b = c.f32(2, "b", N, shape("[N]", {N}), true);
  float* y = c.f32(3, "y", ny, shape("[M,N]", {M, N}));
  if (c.failed) return;
  guarded(c, [&] { kvs::linear(M, K, N, x, w, b, y); });
}

// Whether the byte ranges [a, a + na) and [b, b + nb) share a byte.
bool overlaps(const void* a, int64_t na, const void* b, int64_t nb) {
  const char *pa = static_cast<const char*>(a), *pb = static_cast<const char*>(b);
  return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

// rope(x, out, dims {B,H,T,d}, opts {rotaryDim, theta, interleaved}, positions): rotary
// embedding of x [B,H,T,d] into out (which may be x) at positions [B,T] (rope.h).
NAN_METHOD(Rope) {
  Checker c{"rope", info};
  if (!c.count(5)) return;
  kvs::RopeDims d{};
  v8::Local<v8::Object> dims = c.object(2, "dims");
  d.B = c.integer(c.field(dims, "dims", "B"), "dims.B", 1, INT_MAX32);
  d.H = c.integer(c.field(dims, "dims", "H"), "dims.H", 1, INT_MAX32);
  d.T = c.integer(c.field(dims, "dims", "T"), "dims.T", 1, INT_MAX32);
  d.d = c.integer(c.field(dims, "dims", "d"), "dims.d", 1, INT_MAX32);
  kvs::RopeOpts o{};
  v8::Local<v8::Object> opts = c.object(3, "opts");
  o.rot = c.integer(c.field(opts, "opts", "rotaryDim"), "opts.rotaryDim", 2, d.d);
  if (!c.failed && o.rot % 2 != 0) return c.range_error("opts.rotaryDim must be even, got " + std::to_string(o.rot));
  o.theta = c.number(c.field(opts, "opts", "theta"), "opts.theta", 1e-30, 1e300, false);
  v8::Local<v8::Value> il = c.field(opts, "opts", "interleaved");
  if (!c.failed && !il->IsBoolean()) return c.type_error("opts.interleaved must be a boolean, got " + Checker::describe(il));
  o.interleaved = !c.failed && Nan::To<bool>(il).FromJust();
  const int64_t n = c.product({d.B, d.H, d.T, d.d}, "x"), np = c.product({d.B, d.T}, "positions");
  if (c.failed) return;
  const float* x = c.f32(0, "x", n, shape("[B,H,T,d]", {d.B, d.H, d.T, d.d}));
  float* out = c.f32(1, "out", n, shape("[B,H,T,d]", {d.B, d.H, d.T, d.d}));
  if (c.failed) return;
  if (!info[4]->IsInt32Array()) return c.type_error("positions must be an Int32Array, got " + Checker::describe(info[4]));
  if ((int64_t)info[4].As<v8::Int32Array>()->Length() != np)
    return c.range_error("expected positions [B,T]=[" + std::to_string(d.B) + "," + std::to_string(d.T) + "] (" +
                         std::to_string(np) + " elements), got " + std::to_string(info[4].As<v8::Int32Array>()->Length()));
  const int32_t* pos = elements<int32_t>(info[4]);
  // out must be x itself or not overlap it (a partial overlap would read rotated values), and
  // not overlap positions (read by every task while out is written).
  if (x != out && overlaps(x, n * 4, out, n * 4)) return c.range_error("out must be x itself or not overlap it");
  if (overlaps(pos, np * 4, out, n * 4)) return c.range_error("positions must not overlap out");
  guarded(c, [&] { kvs::rope_apply(d, o, pos, x, out); });
}

// kvEncode(dtype, src, dst, scale | null, rows, d): src [rows,d] fp32 -> dst [rows,d] in the
// cache storage type 'f16' | 'bf16' (Uint16Array) | 'i8' (Int8Array, scale [rows,ceil(d/32)]).
NAN_METHOD(KvEncode) {
  Checker c{"kvEncode", info};
  if (!c.count(6)) return;
  if (!info[0]->IsString()) return c.type_error("dtype must be a string, got " + Checker::describe(info[0]));
  const std::string name = short_string(info[0]);
  kvs::KvDtype dtype = kvs::KvDtype::F32;
  bool known = false;
  for (kvs::KvDtype t : {kvs::KvDtype::F16, kvs::KvDtype::BF16, kvs::KvDtype::I8})
    if (name == Checker::dtype_name(t)) dtype = t, known = true;
  if (!known) return c.range_error("dtype must be one of 'f16', 'bf16', 'i8', got '" + utf8_prefix(name, 64) + "'");
  const int64_t rows = c.integer(info[4], "rows", 0, INT_MAX32), d = c.integer(info[5], "d", 1, INT_MAX32);
  const int64_t n = c.product({rows, d}, "src"), ns = c.product({rows, kvs::q8_groups(d)}, "scale");
  if (c.failed) return;
  const float* src = c.f32(1, "src", n, shape("[rows,d]", {rows, d}));
  void* dst = const_cast<void*>(c.storage(2, "dst", n, shape("[rows,d]", {rows, d}), dtype));
  float* scale = nullptr;
  if (dtype == kvs::KvDtype::I8) scale = c.f32(3, "scale", ns, shape("[rows,ceil(d/32)]", {rows, kvs::q8_groups(d)}));
  else if (!c.failed && !info[3]->IsNullOrUndefined()) return c.type_error("scale must be null unless dtype is 'i8', got " + Checker::describe(info[3]));
  if (c.failed || rows == 0) return;
  // Rows are encoded in parallel: dst and scale must not overlap src or each other.
  const int64_t dst_bytes = n * (dtype == kvs::KvDtype::I8 ? 1 : 2);
  if (overlaps(src, n * 4, dst, dst_bytes)) return c.range_error("dst must not overlap src");
  if (scale && (overlaps(scale, ns * 4, src, n * 4) || overlaps(scale, ns * 4, dst, dst_bytes)))
    return c.range_error("scale must not overlap src or dst");
  guarded(c, [&] { kvs::kv_encode(dtype, src, rows, d, dst, scale); });
}

// setNumThreads(n): kvstream's own worker count; OpenBLAS stays at one thread inside.
NAN_METHOD(SetNumThreads) {
  Checker c{"setNumThreads", info};
  if (!c.count(1)) return;
  const int64_t n = c.integer(info[0], "n", 1, kvs::MAX_THREADS);
  if (c.failed) return;
  guarded(c, [&] { kvs::set_num_threads((int)n); });
}

// setKernelPath(name): 'auto' | 'tile' | 'blas' | 'rows' | 'deterministic' (kernel_path.h).
NAN_METHOD(SetKernelPath) {
  Checker c{"setKernelPath", info};
  if (!c.count(1)) return;
  if (!info[0]->IsString()) return c.type_error("path must be a string, got " + Checker::describe(info[0]));
  const std::string name = short_string(info[0]);
  for (kvs::KernelPath p : {kvs::KernelPath::Auto, kvs::KernelPath::Tile, kvs::KernelPath::Blas, kvs::KernelPath::Rows,
                            kvs::KernelPath::Deterministic}) {
    if (name != kvs::kernel_path_name(p)) continue;
    if (p == kvs::KernelPath::Tile && !kvs::tile_available())
      return c.range_error("path 'tile' needs the tile kernel (AVX-512F or AVX2 with FMA), which this CPU or build lacks or KVSTREAM_TILE=off turned off (info().tile is false)");
    return kvs::set_kernel_path(p);
  }
  c.range_error("path must be one of 'auto', 'tile', 'blas', 'rows', 'deterministic', got '" + utf8_prefix(name, 64) + "'");
}

NAN_METHOD(GetKernelPath) {
  info.GetReturnValue().Set(Nan::New(kvs::kernel_path_name(kvs::kernel_path())).ToLocalChecked());
}

// kernelCounts(): { name: calls } for every kernel path counter (kernel_path.h).
NAN_METHOD(KernelCounts) {
  v8::Local<v8::Object> o = Nan::New<v8::Object>();
  for (int i = 0; i < kvs::COUNTER_COUNT; ++i)
    Nan::Set(o, Nan::New(kvs::COUNTER_NAMES[i]).ToLocalChecked(),
             Nan::New((double)kvs::g_counters[i].load(std::memory_order_relaxed)));
  info.GetReturnValue().Set(o);
}

NAN_METHOD(ResetKernelCounts) { kvs::reset_counters(); }

// poolCheck(tasks, throwAt): a self-test of the thread pool for the suite. Runs `tasks` tasks,
// each a nested parallel_for of 8 steps; task `throwAt` (-1: none) throws after its steps.
// Returns the number of steps run, or throws what the task threw (after every task finished).
NAN_METHOD(PoolCheck) {
  Checker c{"poolCheck", info};
  if (!c.count(2)) return;
  const int64_t tasks = c.integer(info[0], "tasks", 0, 1 << 20), throw_at = c.integer(info[1], "throwAt", -1, 1 << 20);
  if (c.failed) return;
  std::atomic<int64_t> steps{0};
  guarded(c, [&] {
    kvs::parallel_for(tasks, [&](int64_t i) {
      kvs::parallel_for(8, [&](int64_t) { steps.fetch_add(1); }, 1e9);
      if (i == throw_at) throw std::runtime_error("task " + std::to_string(i) + " failed");
    }, 1e9);
  });
  if (!c.failed) info.GetReturnValue().Set(Nan::New((double)steps.load()));
}

NAN_METHOD(Info) {
  v8::Local<v8::Object> o = Nan::New<v8::Object>();
  Nan::Set(o, Nan::New("blas").ToLocalChecked(), Nan::New(kvs::blas_name()).ToLocalChecked());
  Nan::Set(o, Nan::New("blasCore").ToLocalChecked(), Nan::New(kvs::blas_core()).ToLocalChecked());
  Nan::Set(o, Nan::New("threads").ToLocalChecked(), Nan::New(kvs::get_num_threads()));
  Nan::Set(o, Nan::New("blasThreads").ToLocalChecked(), Nan::New(kvs::blas_get_threads()));
  Nan::Set(o, Nan::New("tile").ToLocalChecked(), Nan::New(kvs::tile_available()));
  Nan::Set(o, Nan::New("kvDirect").ToLocalChecked(), Nan::New(kvs::kv_direct()));
  Nan::Set(o, Nan::New("kvStreamBytes").ToLocalChecked(), Nan::New((double)kvs::kv_stream_bytes()));
  Nan::Set(o, Nan::New("vmath").ToLocalChecked(), Nan::New(kvs::vmath_isa()).ToLocalChecked());
  Nan::Set(o, Nan::New("path").ToLocalChecked(), Nan::New(kvs::kernel_path_name(kvs::kernel_path())).ToLocalChecked());
  info.GetReturnValue().Set(o);
}

NAN_MODULE_INIT(Init) {
  // Per isolate (the main thread and each worker_threads isolate run Init once each).
  if (!t_folds) {
    t_folds = new AsyncFolds{Nan::GetCurrentEventLoop()};
    node::AddEnvironmentCleanupHook(v8::Isolate::GetCurrent(), drain_async_folds, t_folds);
  }
  // Every core by default, set once per process: a worker_threads isolate loading the addon
  // again keeps the pool (and any count set since). The loader (src/native.ts) applies
  // KVSTREAM_NUM_THREADS after its own strict check.
  static std::once_flag once;
  std::call_once(once, [] {
    try {
      kvs::set_num_threads((int)std::clamp(std::thread::hardware_concurrency(), 1u, (unsigned)kvs::MAX_THREADS));
    } catch (const std::system_error&) {
      // No threads to be had: the pool stays at the calling thread.
    }
  });
  Nan::SetMethod(target, "attnUpdate", AttnUpdate);
  Nan::SetMethod(target, "attnUpdateAsync", AttnUpdateAsync);
  Nan::SetMethod(target, "attnMerge", AttnMerge);
  Nan::SetMethod(target, "attnFinalize", AttnFinalize);
  Nan::SetMethod(target, "attnProbs", AttnProbs);
  Nan::SetMethod(target, "linear", Linear);
  Nan::SetMethod(target, "mhaForward", MhaForward);
  Nan::SetMethod(target, "projectHeads", ProjectHeads);
  Nan::SetMethod(target, "mergeProject", MergeProject);
  Nan::SetMethod(target, "rope", Rope);
  Nan::SetMethod(target, "kvEncode", KvEncode);
  Nan::SetMethod(target, "setNumThreads", SetNumThreads);
  Nan::SetMethod(target, "setKernelPath", SetKernelPath);
  Nan::SetMethod(target, "getKernelPath", GetKernelPath);
  Nan::SetMethod(target, "kernelCounts", KernelCounts);
  Nan::SetMethod(target, "resetKernelCounts", ResetKernelCounts);
  Nan::SetMethod(target, "poolCheck", PoolCheck);
  Nan::SetMethod(target, "info", Info);
}

}  // namespace

NAN_MODULE_WORKER_ENABLED(kvstream, Init)
