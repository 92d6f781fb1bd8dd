{
  "targets": [
    {
      "target_name": "vxmesh_native",
      "sources": ["encap/native/vxmesh_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "vxmesh-cni",
      "type": "executable",
      "sources": ["cni/shim/vxmesh-cni.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    }
  ]
}
