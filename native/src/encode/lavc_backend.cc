#include "encode/lavc_backend.h"

#include <algorithm>
#include <climits>

extern "C" {
#include <libavutil/frame.h>
#include <libavutil/opt.h>
}

namespace wl::encode {

std::string AvError(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof(buf));
  return buf;
}

void LavcBackend::ApplyRate(AVCodecContext* ctx, uint32_t bps, double real_fps) const {
  const double real = std::max(1.0, real_fps);
  const double scaled = rate_gain_ * static_cast<double>(bps) * static_cast<double>(nominal_fps_) / real;
  ctx->bit_rate = static_cast<int64_t>(scaled);
  ctx->rc_max_rate = static_cast<int64_t>(scaled);
  // A VBV of about one frame at the real rate: no frame may take much longer than a frame interval to send.
  // (1, 1.5 and 2 frames were measured: libx264 lands ~15 % under the target with each.)
  ctx->rc_buffer_size = static_cast<int>(std::max(static_cast<double>(bps) / real, 8000.0));
  ctx->rc_initial_buffer_occupancy = ctx->rc_buffer_size;
}

bool LavcBackend::Open(const EncoderConfig& config, std::string* error) {
  Close();
  cfg_ = config;
  const AVCodec* codec = avcodec_find_encoder_by_name(CodecName());
  if (codec == nullptr) {
    *error = std::string("libavcodec has no ") + CodecName() + " encoder";
    return false;
  }
  ctx_ = avcodec_alloc_context3(codec);
  pkt_ = av_packet_alloc();
  if (ctx_ == nullptr || pkt_ == nullptr) {
    *error = "out of memory";
    Close();
    return false;
  }
  ctx_->width = static_cast<int>(config.width);
  ctx_->height = static_cast<int>(config.height);
  // 90 kHz, the RTP video clock: pts are capture times, so rate control follows the real frame rate.
  ctx_->time_base = AVRational{1, 90000};
  ctx_->framerate = AVRational{static_cast<int>(config.fps), 1};
  ctx_->pix_fmt = InputFormat();  // hardware backends replace it with their surface format
  ctx_->max_b_frames = 0;
  ctx_->refs = 1;
  ctx_->gop_size = INT_MAX / 2;  // infinite GOP: IDRs only on request
  ctx_->flags |= AV_CODEC_FLAG_LOW_DELAY;
  ctx_->color_range = AVCOL_RANGE_MPEG;
  ctx_->colorspace = AVCOL_SPC_BT709;
  ctx_->color_primaries = AVCOL_PRI_BT709;
  ctx_->color_trc = AVCOL_TRC_BT709;
  nominal_fps_ = config.fps;
  real_fps_ = config.fps;
  ApplyRate(ctx_, config.bitrate_bps, real_fps_);
  AVDictionary* opts = nullptr;
  if (!Configure(ctx_, &opts, error)) {
    av_dict_free(&opts);
    Close();
    return false;
  }
  const int r = avcodec_open2(ctx_, codec, &opts);
  av_dict_free(&opts);
  if (r < 0) {
    *error = std::string(CodecName()) + ": avcodec_open2 failed: " + AvError(r);
    Close();
    return false;
  }
  return true;
}

Status LavcBackend::Encode(const InputFrame& in, bool force_idr, EncodedUnit* out, std::string* error) {
  out->data.clear();
  out->keyframe = false;
  if (TakeFault()) {
    *error = std::string(Name()) + ": injected fault";
    return Status::kError;
  }
  if (ctx_ == nullptr) {
    *error = std::string(Name()) + ": not open";
    return Status::kError;
  }
  AVFrame* f = PrepareFrame(in, error);
  if (f == nullptr) return Status::kError;
  f->pts = in.pts_90k;
  // With forced-idr (x264, nvenc) or VA-API's rule, an I picture request is an IDR.
  f->pict_type = force_idr ? AV_PICTURE_TYPE_I : AV_PICTURE_TYPE_NONE;
  av_frame_remove_side_data(f, AV_FRAME_DATA_REGIONS_OF_INTEREST);
  if (cfg_.damage_roi && Caps().roi && in.damage != nullptr && !in.damage->empty() && !force_idr) {
    // Better quality where the screen changed: a negative quantiser offset on the damaged rects.
    // The list is capped (a long list costs more than it helps; the capture merges beyond 64 anyway).
    const size_t n = std::min<size_t>(in.damage->size(), 16);
    AVFrameSideData* sd = av_frame_new_side_data(f, AV_FRAME_DATA_REGIONS_OF_INTEREST, n * sizeof(AVRegionOfInterest));
    if (sd != nullptr) {
      auto* roi = reinterpret_cast<AVRegionOfInterest*>(sd->data);
      for (size_t i = 0; i < n; ++i) {
        const damage::Rect& r = (*in.damage)[i];
        roi[i].self_size = sizeof(AVRegionOfInterest);
        roi[i].top = static_cast<int>(r.y);
        roi[i].bottom = static_cast<int>(r.y + r.height);
        roi[i].left = static_cast<int>(r.x);
        roi[i].right = static_cast<int>(r.x + r.width);
        roi[i].qoffset = AVRational{-1, 5};
      }
    }
  }
  int r = avcodec_send_frame(ctx_, f);
  if (f != in.av) av_frame_unref(f);
  if (r < 0) {
    *error = std::string(Name()) + ": avcodec_send_frame: " + AvError(r);
    return Status::kError;
  }
  for (;;) {
    r = avcodec_receive_packet(ctx_, pkt_);
    if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) break;
    if (r < 0) {
      *error = std::string(Name()) + ": avcodec_receive_packet: " + AvError(r);
      return Status::kError;
    }
    out->data.insert(out->data.end(), pkt_->data, pkt_->data + pkt_->size);
    out->keyframe = out->keyframe || (pkt_->flags & AV_PKT_FLAG_KEY) != 0;
    out->pts_90k = pkt_->pts;
    av_packet_unref(pkt_);
  }
  return Status::kOk;
}

bool LavcBackend::SetBitrate(uint32_t bps) {
  if (ctx_ == nullptr) return false;
  cfg_.bitrate_bps = bps;
  if (!Caps().bitrate_without_idr) return false;
  // libx264 (and nvenc) compare these with their current parameters before each frame and
  // reconfigure in place (x264_encoder_reconfig): no new IDR.
  ApplyRate(ctx_, bps, real_fps_);
  return true;
}

bool LavcBackend::SetFramerate(uint32_t fps) {
  if (ctx_ == nullptr) return false;
  if (!Caps().framerate_without_idr) return false;
  real_fps_ = fps;
  ApplyRate(ctx_, cfg_.bitrate_bps, real_fps_);
  return true;
}

void LavcBackend::Close() {
  if (ctx_ != nullptr) avcodec_free_context(&ctx_);
  if (pkt_ != nullptr) av_packet_free(&pkt_);
  ReleaseHw();
}

}  // namespace wl::encode
