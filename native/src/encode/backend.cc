#include "encode/backend.h"

#include <cstring>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/frame.h>
}

namespace wl::encode {

const std::vector<std::string>& BackendNames() {
  static const std::vector<std::string> names = {"vaapi", "nvenc", "x264", "openh264"};
  return names;
}

std::unique_ptr<Backend> CreateBackend(const std::string& name) {
  if (name == "x264") return CreateX264Backend();
  if (name == "openh264") return CreateOpenH264Backend();
  if (name == "vaapi") return CreateVaapiBackend();
  if (name == "nvenc") return CreateNvencBackend();
  return nullptr;
}

ProbeResult Probe(const std::string& name) {
  ProbeResult r;
  r.name = name;
  std::unique_ptr<Backend> b = CreateBackend(name);
  if (!b) {
    r.reason = "unknown backend";
    return r;
  }
  r.caps = b->Caps();
  // Compiled in means: this addon has the code and libavcodec has the encoder.
  const char* lavc = name == "x264" ? "libx264" : name == "vaapi" ? "h264_vaapi" : name == "nvenc" ? "h264_nvenc" : nullptr;
  if (lavc != nullptr && avcodec_find_encoder_by_name(lavc) == nullptr) {
    r.reason = std::string("this libavcodec was built without ") + lavc;
    return r;
  }
  r.compiled = true;
  std::string reason;
  if (name == "vaapi" && !VaapiDevicePresent(&r.device, &reason)) {
    r.reason = reason;
    return r;
  }
  if (name == "nvenc" && !NvencDevicePresent(&reason)) {
    r.reason = reason;
    return r;
  }
  EncoderConfig cfg;
  cfg.width = 256;
  cfg.height = 144;
  cfg.bitrate_bps = 500'000;
  cfg.fps = 30;
  cfg.threads = 1;
  if (!b->Open(cfg, &reason)) {
    r.reason = reason;
    return r;
  }
  AVFrame* f = av_frame_alloc();
  f->format = b->InputFormat();
  f->width = 256;
  f->height = 144;
  if (av_frame_get_buffer(f, 32) < 0) {
    av_frame_free(&f);
    r.reason = "out of memory";
    return r;
  }
  for (int p = 0; p < 4 && f->buf[p] != nullptr; ++p) std::memset(f->buf[p]->data, 128, f->buf[p]->size);
  InputFrame in;
  in.av = f;
  for (int p = 0; p < 3; ++p) {
    in.planes[p] = f->data[p];
    in.strides[p] = f->linesize[p];
  }
  EncodedUnit out;
  const Status s = b->Encode(in, true, &out, &reason);
  b->Close();
  av_frame_free(&f);
  if (s != Status::kOk || out.data.empty()) {
    r.reason = s == Status::kOk ? "the encoder produced nothing for a test frame" : reason;
    return r;
  }
  r.available = true;
  r.reason = name == "vaapi" ? "opened on " + r.device : "opened a 256x144 test encoder";
  return r;
}

}  // namespace wl::encode
