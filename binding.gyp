{
  "variables": {
    "kvstream_blas%": "<!(node native/blas.cjs mode)"
  },
  "targets": [
    {
      "target_name": "kvstream",
      "sources": [
        "native/binding.cc",
        "native/attention.cc",
        "native/exact.cc",
        "native/gemm.cc",
        "native/kernel_path.cc",
        "native/kvencode.cc",
        "native/kvstore.cc",
        "native/rope.cc",
        "native/threads.cc",
        "native/tile.cc",
        "native/vmath.cc"
      ],
      "include_dirs": ["<!(node -e \"require('nan')\")"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno", "-Wno-psabi"],
      "conditions": [
        ["kvstream_blas=='openblas'", {
          "defines": ["KVSTREAM_OPENBLAS=1"],
          "cflags_cc": ["<!@(node native/blas.cjs cflags)"],
          "libraries": ["<!@(node native/blas.cjs libs)"]
        }]
      ]
    }
  ]
}
