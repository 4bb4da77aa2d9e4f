// h264_nvenc through libavcodec on a CUDA device. BGR0 frames go in as they come from capture (the
// pipeline wraps the capture buffer, no conversion on the CPU): NVENC converts to YUV on the GPU.
#include <dlfcn.h>
#include <unistd.h>

#include "encode/lavc_backend.h"

extern "C" {
#include <libavutil/hwcontext.h>
#include <libavutil/opt.h>
}

namespace wl::encode {

bool NvencDevicePresent(std::string* reason) {
  void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (cuda == nullptr) {
    *reason = "libcuda.so.1 not found (no NVIDIA driver installed)";
    return false;
  }
  dlclose(cuda);
  if (access("/dev/nvidiactl", F_OK) != 0) {
    *reason = "libcuda is installed but /dev/nvidiactl is missing (no NVIDIA GPU exposed to this machine)";
    return false;
  }
  void* enc = dlopen("libnvidia-encode.so.1", RTLD_NOW | RTLD_LOCAL);
  if (enc == nullptr) {
    *reason = "libnvidia-encode.so.1 not found (the driver's NVENC library is not installed)";
    return false;
  }
  dlclose(enc);
  return true;
}

namespace {

class NvencBackend final : public LavcBackend {
 public:
  const char* Name() const override { return "nvenc"; }
  AVPixelFormat InputFormat() const override { return AV_PIX_FMT_BGR0; }
  Capabilities Caps() const override {
    Capabilities c;
    // FFmpeg's h264_nvenc reconfigures bitrate in place but forces an IDR with it (the NVENC API
    // itself could avoid that).
    c.bitrate_without_idr = false;
    c.framerate_without_idr = false;
    c.roi = false;  // FFmpeg 5.1's nvenc ignores AV_FRAME_DATA_REGIONS_OF_INTEREST
    c.intra_refresh = true;
    return c;
  }
  bool SetBitrate(uint32_t bps) override {
    if (ctx_ == nullptr) return false;
    cfg_.bitrate_bps = bps;
    ApplyRate(ctx_, bps, real_fps_);  // nvenc's reconfigure: in place (with an IDR), no reopen
    return true;
  }

 protected:
  const char* CodecName() const override { return "h264_nvenc"; }
  bool Configure(AVCodecContext* ctx, AVDictionary** opts, std::string* error) override {
    std::string reason;
    if (!NvencDevicePresent(&reason)) {
      *error = "nvenc: " + reason;
      return false;
    }
    const int r = av_hwdevice_ctx_create(&device_, AV_HWDEVICE_TYPE_CUDA, nullptr, nullptr, 0);
    if (r < 0) {
      *error = "nvenc: cannot create a CUDA context: " + AvError(r);
      return false;
    }
    ctx->hw_device_ctx = av_buffer_ref(device_);
    ctx->pix_fmt = AV_PIX_FMT_BGR0;
    ctx->rc_min_rate = ctx->bit_rate;
    av_dict_set(opts, "preset", "p1", 0);
    av_dict_set(opts, "tune", "ull", 0);
    av_dict_set(opts, "zerolatency", "1", 0);
    av_dict_set(opts, "delay", "0", 0);
    av_dict_set(opts, "forced-idr", "1", 0);
    av_dict_set(opts, "rc", "cbr", 0);
    av_dict_set(opts, "profile", cfg_.profile == Profile::kMain ? "main" : "baseline", 0);
    if (cfg_.intra_refresh) av_dict_set(opts, "intra-refresh", "1", 0);
    return true;
  }
  void ReleaseHw() override { av_buffer_unref(&device_); }

 private:
  AVBufferRef* device_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> CreateNvencBackend() { return std::make_unique<NvencBackend>(); }

}  // namespace wl::encode
