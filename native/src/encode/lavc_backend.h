// Shared libavcodec plumbing for the x264, VA-API and NVENC backends: one AVCodecContext, the common
// low-latency settings, send_frame/receive_packet, forced IDRs and region-of-interest side data.
#pragma once

#include <string>

#include "encode/backend.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/dict.h>
}

namespace wl::encode {

class LavcBackend : public Backend {
 public:
  ~LavcBackend() override { LavcBackend::Close(); }
  bool Open(const EncoderConfig& config, std::string* error) override;
  Status Encode(const InputFrame& in, bool force_idr, EncodedUnit* out, std::string* error) override;
  bool SetBitrate(uint32_t bps) override;
  bool SetFramerate(uint32_t fps) override;
  void Close() override;

 protected:
  virtual const char* CodecName() const = 0;
  /** Backend-specific context fields and private options, before avcodec_open2. */
  virtual bool Configure(AVCodecContext* ctx, AVDictionary** opts, std::string* error) = 0;
  /** The frame to send for `in` (default: `in.av` itself). Hardware backends upload or map here. */
  virtual AVFrame* PrepareFrame(const InputFrame& in, std::string* error) { return in.av; }
  virtual void ReleaseHw() {}
  /** Sets bit_rate / rc_max_rate / rc_buffer_size so that each frame gets bps / real_fps bits and the
   *  VBV holds about one frame. The encoder runs at a constant nominal rate (cfg_.fps at open: variable
   *  frame rate input costs libx264 a frame of delay), so the rate is scaled by nominal / real. */
  void ApplyRate(AVCodecContext* ctx, uint32_t bps, double real_fps) const;
  uint32_t nominal_fps_ = 60;
  // Bitrate and VBV rate handed to the encoder per bit of target (see X264Backend).
  double rate_gain_ = 1.0;
  double real_fps_ = 60;

  EncoderConfig cfg_;
  AVCodecContext* ctx_ = nullptr;
  AVPacket* pkt_ = nullptr;
};

}  // namespace wl::encode
