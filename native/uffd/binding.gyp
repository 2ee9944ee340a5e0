{
  "targets": [
    {
      "target_name": "hearth_uffd",
      "sources": [
        "src/addon.cc",
        "src/handshake.cc",
        "src/page_server.cc",
        "src/files.cc",
        "src/harness.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "libraries": ["-lpthread"]
    }
  ]
}
