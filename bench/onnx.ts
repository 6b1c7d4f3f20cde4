// A tiny protobuf writer for the few ONNX messages the bench needs (field numbers from onnx.proto):
// ModelProto{ir_version=1, producer_name=2, graph=7, opset_import=8}
// GraphProto{node=1, name=2, initializer=5, input=11, output=12}
// NodeProto{input=1, output=2, name=3, op_type=4, attribute=5, domain=7}
// AttributeProto{name=1, f=2, i=3, type=20 (FLOAT=1, INT=2)}
// TensorProto{dims=1, data_type=2 (FLOAT=1), name=8, raw_data=9}
// ValueInfoProto{name=1, type=2}; TypeProto{tensor_type=1}; TypeProto.Tensor{elem_type=1, shape=2}
// TensorShapeProto{dim=1}; Dimension{dim_value=1, dim_param=2}

class Writer {
  private parts: number[] = [];
  varint(v: number | bigint): this {
    let x = BigInt.asUintN(64, BigInt(v));
    do {
      let byte = Number(x & 0x7fn);
      x >>= 7n;
      if (x) byte |= 0x80;
      this.parts.push(byte);
    } while (x);
    return this;
  }
  key(field: number, wire: number): this {
    return this.varint((field << 3) | wire);
  }
  int(field: number, v: number): this {
    return this.key(field, 0).varint(v);
  }
  bytes(field: number, b: Uint8Array): this {
    this.key(field, 2).varint(b.length);
    for (const x of b) this.parts.push(x);
    return this;
  }
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  message(field: number, m: Writer): this {
    return this.bytes(field, m.finish());
  }
  float(field: number, v: number): this {
    this.key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.parts.push(...b);
    return this;
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

export type Attr = { name: string; int?: number; float?: number };
export interface Node { op: string; domain?: string; inputs: string[]; outputs: string[]; attrs?: Attr[] }
/** A dim is a number or a symbolic name; elemType is TensorProto.DataType (default 1 = FLOAT; 10 = FLOAT16, 16 = BFLOAT16). */
export interface Value { name: string; dims: (number | string)[]; elemType?: number }
export interface Initializer { name: string; dims: number[]; data: Float32Array }

function valueInfo(v: Value): Writer {
  const shape = new Writer();
  for (const d of v.dims) shape.message(1, typeof d === 'number' ? new Writer().int(1, d) : new Writer().string(2, d));
  const tensorType = new Writer().int(1, v.elemType ?? 1).message(2, shape);
  return new Writer().string(1, v.name).message(2, new Writer().message(1, tensorType));
}

/** An ONNX model (fp32) with the given nodes; opsets: default domain 17 and com.microsoft 1. */
export function onnxModel(g: { nodes: Node[]; inputs: Value[]; outputs: Value[]; initializers?: Initializer[] }): Uint8Array {
  const graph = new Writer();
  g.nodes.forEach((n, i) => {
    const node = new Writer();
    for (const x of n.inputs) node.string(1, x);
    for (const x of n.outputs) node.string(2, x);
    node.string(3, `${n.op}_${i}`).string(4, n.op);
    for (const a of n.attrs ?? []) {
      const attr = new Writer().string(1, a.name);
      if (a.float !== undefined) attr.float(2, a.float).int(20, 1);
      else attr.int(3, a.int!).int(20, 2);
      node.message(5, attr);
    }
    if (n.domain) node.string(7, n.domain);
    graph.message(1, node);
  });
  graph.string(2, 'kvstream_bench');
  for (const t of g.initializers ?? []) {
    const tensor = new Writer();
    for (const d of t.dims) tensor.int(1, d);
    tensor.int(2, 1).string(8, t.name).bytes(9, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    graph.message(5, tensor);
  }
  for (const v of g.inputs) graph.message(11, valueInfo(v));
  for (const v of g.outputs) graph.message(12, valueInfo(v));
  return new Writer()
    .int(1, 8)
    .string(2, 'kvstream-bench')
    .message(7, graph)
    .message(8, new Writer().string(1, '').int(2, 17))
    .message(8, new Writer().string(1, 'com.microsoft').int(2, 1))
    .finish();
}
