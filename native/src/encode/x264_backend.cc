// libx264 through libavcodec: the software backend that every machine has.
#include <string>
#include <thread>

#include "encode/lavc_backend.h"

extern "C" {
#include <libavutil/opt.h>
}

namespace wl::encode {
namespace {

class X264Backend final : public LavcBackend {
 public:
  // Calibration, measured on saturated screen content (a terminal flooded with text, 720p30, 1.5 and
  // 3 Mbit/s): with a one-frame VBV and maxrate == bitrate, libx264 lands 15-20 % under its target
  // whatever the VBV size (1, 1.5, 2 frames) or ratetol; ffmpeg's CLI with the same settings does
  // too. Asking for 15 % more (VBV rate included) brings the produced rate to within ~5 %.
  X264Backend() { rate_gain_ = 1.15; }
  const char* Name() const override { return "x264"; }
  AVPixelFormat InputFormat() const override { return AV_PIX_FMT_YUV420P; }
  Capabilities Caps() const override {
    Capabilities c;
    c.bitrate_without_idr = true;   // reconfig_encoder -> x264_encoder_reconfig between frames
    c.framerate_without_idr = true;  // the per-frame budget (bitrate scaled by nominal / real fps)
    c.roi = true;                    // AV_FRAME_DATA_REGIONS_OF_INTEREST -> quant offsets (needs AQ)
    c.intra_refresh = true;
    return c;
  }

 protected:
  const char* CodecName() const override { return "libx264"; }
  bool Configure(AVCodecContext* ctx, AVDictionary** opts, std::string* error) override {
    // libavcodec turns sliced threads off unless thread_type is exactly FF_THREAD_SLICE; frame
    // threads would add a frame of latency per thread.
    ctx->thread_type = FF_THREAD_SLICE;
    ctx->thread_count = cfg_.threads ? static_cast<int>(cfg_.threads) : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    av_dict_set(opts, "preset", cfg_.preset.c_str(), 0);
    av_dict_set(opts, "tune", "zerolatency", 0);
    av_dict_set(opts, "profile", cfg_.profile == Profile::kMain ? "main" : "baseline", 0);
    av_dict_set(opts, "forced-idr", "1", 0);
    if (cfg_.intra_refresh) av_dict_set(opts, "intra-refresh", "1", 0);
    // ROI needs adaptive quantisation, which ultrafast turns off.
    if (cfg_.damage_roi) av_dict_set(opts, "aq-mode", "1", 0);
    // Constant frame rate input (zerolatency's default): with variable frame rate input (force-cfr=0)
    // libx264 holds every frame back until the next one arrives, to learn its duration. The real
    // frame rate reaches rate control through SetFramerate() instead (the pipeline measures it).
    std::string params = "scenecut=0:rc-lookahead=0:sync-lookahead=0:mbtree=0:bframes=0:ref=1:sliced-threads=1";
    // Intra refresh replaces IDRs by a moving column with a period of keyint frames; keep it short.
    // x264 writes the lowest profile its tools need: ultrafast has no CABAC, so "main" alone would
    // still come out as baseline. CABAC is the point of main (10-15 % fewer bits, little CPU).
    if (cfg_.profile == Profile::kMain) params += ":cabac=1";
    params += cfg_.intra_refresh ? ":keyint=" + std::to_string(std::max(2u, cfg_.fps * 2)) : ":keyint=infinite";
    av_dict_set(opts, "x264-params", params.c_str(), 0);
    // A quality ceiling: on a static screen the unused budget would otherwise go into ever finer
    // refreshes of pixels that are already right; at QP 20 (text stays crisp) they become skips.
    ctx->qmin = 20;
    if (cfg_.intra_refresh) ctx->gop_size = static_cast<int>(std::max(2u, cfg_.fps * 2));
    (void)error;
    return true;
  }
};

}  // namespace

std::unique_ptr<Backend> CreateX264Backend() { return std::make_unique<X264Backend>(); }

}  // namespace wl::encode
