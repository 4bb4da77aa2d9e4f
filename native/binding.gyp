{
  # Built by `node-gyp rebuild --directory native` (npm run build:native) against the Node 22 headers
  # that scripts/env.sh selects. Targets:
  #   wl_webrtc            the addon (build/Release/wl_webrtc.node)
  #   tiles_test           C++ unit tests of the tile differ (run by test/capture/tiles.test.ts)
  #   capture_source_test  the encoder-facing LatestFrameSource against real PipeWire (run by
  #                        test/capture/pipewire.test.ts)
  #   pw_video_producer    a real PipeWire video source for the capture integration tests
  #   convert_test         C++ unit tests of the encoder's damage-aware colour conversion (run by
  #                        test/encode/convert.test.ts)
  #   dmabuf_test          C++ unit tests of the DMA-BUF capture params, frame fd ownership and the
  #                        software fallback's LINEAR mapping (run by test/capture/dmabuf.test.ts)
  "variables": {
    "pw_cflags": "<!(pkg-config --cflags libpipewire-0.3)",
    "pw_libs": "<!(pkg-config --libs libpipewire-0.3)",
    # encode stage: libavcodec (libx264, h264_vaapi, h264_nvenc), swscale, OpenH264, libva (VPP), libdrm headers
    "enc_cflags": "<!(pkg-config --cflags libavcodec libavutil libswscale openh264 libva libdrm)",
    "enc_libs": "<!(pkg-config --libs libavcodec libavutil libswscale openh264 libva)",
    # capture's DMA-BUF import check: libva on a DRM render node (libva-drm, part of libva-dev)
    "dmabuf_cflags": "<!(pkg-config --cflags libva libva-drm libdrm)",
    "dmabuf_libs": "<!(pkg-config --libs libva-drm libva)",
  },
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-O3", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                  "-Wno-unused-parameter", "-Wno-cast-function-type"],
    "include_dirs": ["src"],
    # Not built by default: `WL_WEBRTC_ASAN=1 node scripts/build-native.mjs` builds this configuration
    # into build/Asan (AddressSanitizer + UBSan, frame pointers, debug info) for hunting memory bugs.
    # Node must then run with LD_PRELOAD=$(gcc -print-file-name=libasan.so) and
    # WL_WEBRTC_ADDON=native/build/Asan/wl_webrtc.node (docs/architecture.md, "Memory checks").
    "configurations": {
      "Asan": {
        "inherit_from": ["Release"],
        "cflags": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"],
        "ldflags": ["-fsanitize=address,undefined"],
      },
    },
  },
  "targets": [
    {
      "target_name": "wl_webrtc",
      "sources": [
        "src/addon.cc",
        "src/capture/capture_binding.cc",
        "src/capture/dmabuf.cc",
        "src/capture/pw_capture.cc",
        "src/damage/damage_binding.cc",
        "src/damage/tiles.cc",
        "src/encode/backend.cc",
        "src/encode/convert.cc",
        "src/encode/dmabuf_map.cc",
        "src/encode/encode_binding.cc",
        "src/encode/frame_feeder.cc",
        "src/encode/h264.cc",
        "src/encode/lavc_backend.cc",
        "src/encode/nvenc_backend.cc",
        "src/encode/openh264_backend.cc",
        "src/encode/pipeline.cc",
        "src/encode/vaapi_backend.cc",
        "src/encode/x264_backend.cc",
        "src/srtp/srtp_binding.cc",
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["<@(pw_cflags)", "<@(enc_cflags)", "<@(dmabuf_cflags)"],
      "libraries": ["<@(pw_libs)", "<@(enc_libs)", "<@(dmabuf_libs)", "-ldl"],
    },
    {
      "target_name": "tiles_test",
      "type": "executable",
      "sources": ["test/tiles_test.cc", "src/damage/tiles.cc"],
    },
    {
      "target_name": "capture_source_test",
      "type": "executable",
      "sources": ["test/capture_source_test.cc", "src/capture/pw_capture.cc", "src/capture/dmabuf.cc", "src/damage/tiles.cc"],
      "cflags_cc": ["<@(pw_cflags)", "<@(dmabuf_cflags)"],
      "libraries": ["<@(pw_libs)", "<@(dmabuf_libs)"],
    },
    {
      "target_name": "dmabuf_test",
      "type": "executable",
      "sources": ["test/dmabuf_test.cc", "src/capture/dmabuf.cc", "src/encode/dmabuf_map.cc"],
      "cflags_cc": ["<@(pw_cflags)", "<@(dmabuf_cflags)"],
      "libraries": ["<@(pw_libs)", "<@(dmabuf_libs)"],
    },
    {
      "target_name": "convert_test",
      "type": "executable",
      "sources": ["test/convert_test.cc", "src/encode/convert.cc"],
      "cflags_cc": ["<@(enc_cflags)"],
      "libraries": ["<@(enc_libs)"],
    },
    {
      "target_name": "pw_video_producer",
      "type": "executable",
      "sources": ["test/pw_video_producer.cc"],
      "cflags_cc": ["<@(pw_cflags)"],
      "libraries": ["<@(pw_libs)"],
    },
  ],
}
