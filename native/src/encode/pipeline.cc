#include "encode/pipeline.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "encode/dmabuf_map.h"
#include "encode/h264.h"

extern "C" {
#include <libavutil/frame.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
}

namespace wl::encode {
namespace {

uint64_t MonoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

double WallMsOfMono(uint64_t mono_ns) {
  timespec rt;
  clock_gettime(CLOCK_REALTIME, &rt);
  const double now_wall_ms = static_cast<double>(rt.tv_sec) * 1e3 + static_cast<double>(rt.tv_nsec) / 1e6;
  return now_wall_ms - static_cast<double>(static_cast<int64_t>(MonoNs() - mono_ns)) / 1e6;
}

}  // namespace

void Histogram::Add(double us) {
  if (count == 0 || us < min_us) min_us = us;
  if (us > max_us) max_us = us;
  ++count;
  sum_us += us;
  size_t i = 0;
  while (i < kBoundsUs.size() && us > kBoundsUs[i]) ++i;
  ++buckets[i];
}

Pipeline::Pipeline(std::shared_ptr<capture::LatestFrameSource> source, const PipelineConfig& config, PipelineSink* sink)
    : source_(std::move(source)), config_(config), sink_(sink) {
  converter_.SetThreads(config_.encoder.threads);
  SetInputSize(config_.encoder.width, config_.encoder.height);
  // Registered before the thread starts: no frame published from now on is missed.
  mailbox_ = source_->Subscribe();
}

void Pipeline::SetInputSize(uint32_t width, uint32_t height) {
  in_w_ = width;
  in_h_ = height;
  const double s = config_.output_scale;
  if (s > 0 && s < 1) {
    auto scale = [s](uint32_t v) { return std::min(v, std::max<uint32_t>(16, static_cast<uint32_t>(v * s) & ~1u)); };
    config_.encoder.width = scale(width);
    config_.encoder.height = scale(height);
  } else {
    config_.encoder.width = width;
    config_.encoder.height = height;
  }
}

Pipeline::~Pipeline() { Stop(); }

std::unique_ptr<Pipeline> Pipeline::Create(std::shared_ptr<capture::LatestFrameSource> source, const PipelineConfig& config,
                                           PipelineSink* sink, std::string* error, std::vector<PipelineEvent>* open_events) {
  std::unique_ptr<Pipeline> p(new Pipeline(std::move(source), config, sink));
  if (!p->OpenFrom(0, "", error, open_events)) return nullptr;
  return p;
}

void Pipeline::Emit(PipelineEvent e) { sink_->Notify(std::move(e)); }

// Opens backends[index], or the next one that opens. `failed` names the backend that just failed
// mid-stream (with `failed_reason`); every step down the list is one fallback event and one count.
bool Pipeline::OpenFrom(size_t index, const std::string& failed_reason, std::string* error,
                        std::vector<PipelineEvent>* events) {
  auto emit = [&](PipelineEvent e) {
    if (e.kind == PipelineEvent::Kind::kFallback) {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.fallbacks;
    }
    if (events != nullptr) events->push_back(std::move(e));
    else Emit(std::move(e));
  };
  if (backend_) {
    if (!failed_reason.empty() && index < config_.backends.size()) {
      PipelineEvent fb;
      fb.kind = PipelineEvent::Kind::kFallback;
      fb.from = backend_->Name();
      fb.to = index < config_.backends.size() ? config_.backends[index] : "";
      fb.reason = failed_reason;
      emit(fb);
    }
    backend_->Close();
    backend_.reset();
  }
  std::string all;
  for (size_t i = index; i < config_.backends.size(); ++i) {
    std::unique_ptr<Backend> b = CreateBackend(config_.backends[i]);
    std::string err;
    if (!b) {
      err = "unknown backend " + config_.backends[i];
    } else if (b->Open(config_.encoder, &err)) {
      // A test frame (mid-grey) tells us the real SPS before any viewer needs it; its output is
      // discarded and the first real frame is an IDR anyway.
      AVFrame* f = av_frame_alloc();
      f->format = b->InputFormat();
      f->width = static_cast<int>(config_.encoder.width);
      f->height = static_cast<int>(config_.encoder.height);
      EncodedUnit unit;
      Status s = Status::kError;
      if (av_frame_get_buffer(f, 64) >= 0) {
        for (int pl = 0; pl < 4 && f->buf[pl] != nullptr; ++pl) std::fill_n(f->buf[pl]->data, f->buf[pl]->size, 128);
        InputFrame in;
        in.av = f;
        for (int pl = 0; pl < 3; ++pl) {
          in.planes[pl] = f->data[pl];
          in.strides[pl] = f->linesize[pl];
        }
        in.pts_90k = last_pts_ = std::max<int64_t>(last_pts_ + 1, 0);
        s = b->Encode(in, true, &unit, &err);
      }
      av_frame_free(&f);
      h264::ParameterSets sets;
      if (s == Status::kOk && !unit.data.empty()) h264::Inspect(unit.data.data(), unit.data.size(), &sets);
      if (s == Status::kOk && !sets.sps.empty()) {
        sps_ = sets.sps;
        pps_ = sets.pps;
        plid_ = h264::ProfileLevelId(sps_.data(), sps_.size());
        backend_ = std::move(b);
        backend_index_ = i;
        // A new backend (switch, fallback, reopen) starts from a fully converted picture.
        converter_.Invalidate();
        force_idr_ = true;
        rc_fps_ = std::max<uint32_t>(config_.encoder.fps, 1);
        ema_dt_ = 0;
        {
          std::lock_guard<std::mutex> lock(stats_mu_);
          stats_.backend = backend_->Name();
          stats_.bitrate_bps = config_.encoder.bitrate_bps;
          stats_.fps = config_.encoder.fps;
          stats_.width = config_.encoder.width;
          stats_.height = config_.encoder.height;
          stats_.profile_level_id = plid_;
        }
        PipelineEvent fmt;
        fmt.kind = PipelineEvent::Kind::kFormat;
        fmt.backend = backend_->Name();
        fmt.profile_level_id = plid_;
        fmt.width = config_.encoder.width;
        fmt.height = config_.encoder.height;
        emit(fmt);
        return true;
      }
      if (s == Status::kOk) err = std::string(b->Name()) + ": the test frame produced no SPS";
      b->Close();
    }
    if (!all.empty()) all += "; ";
    all += err;
    if (i + 1 < config_.backends.size()) {
      PipelineEvent fb;
      fb.kind = PipelineEvent::Kind::kFallback;
      fb.from = config_.backends[i];
      fb.to = config_.backends[i + 1];
      fb.reason = err;
      emit(fb);
    }
  }
  *error = "no H.264 encoder could be opened for " + std::to_string(config_.encoder.width) + "x" +
           std::to_string(config_.encoder.height) + (all.empty() ? "" : ": " + all);
  return false;
}

void Pipeline::Start() {
  thread_ = std::thread([this] {
    // Named so CPU can be attributed per thread (bench/encode.ts, top -H).
    pthread_setname_np(pthread_self(), "wl-encode");
    Run();
  });
}

void Pipeline::Stop() {
  stop_.store(true);
  if (mailbox_) mailbox_->Kick();  // the thread sees stop_ at once
  if (thread_.joinable()) thread_.join();
  source_->Unsubscribe(mailbox_);
  // Everything that owns threads (the encoder's slice threads, swscale's) goes now, not at GC.
  if (backend_) backend_->Close();
  converter_.Reset();
}

PipelineStats Pipeline::Stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

std::string Pipeline::BackendName() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_.backend;
}

std::string Pipeline::ProfileLevelId() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_.profile_level_id;
}

void Pipeline::ApplyControls() {
  if (!backend_) return;
  const uint32_t bps = pending_bitrate_.exchange(0);
  const uint32_t fps = pending_fps_.exchange(0);
  bool reopen = false;
  if (bps != 0 && bps != config_.encoder.bitrate_bps) {
    config_.encoder.bitrate_bps = bps;
    if (!backend_->SetBitrate(bps)) reopen = true;
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.bitrate_bps = bps;
    ++stats_.bitrate_changes;
  }
  if (fps != 0 && fps != config_.encoder.fps) {
    // The frame-rate cap: pacing here; the backend hears the real rate (AdaptRate). Backends that
    // cannot change rates in place are reopened at the new nominal rate.
    config_.encoder.fps = fps;
    if (!backend_->Caps().framerate_without_idr) reopen = true;
    else if (rc_fps_ > fps) {
      rc_fps_ = fps;
      backend_->SetFramerate(fps);
    }
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.fps = fps;
  }
  if (reopen) {
    // This backend reads its rate control only at init: reopen it (the next frame is an IDR).
    std::string err;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.reinits;
    }
    if (!OpenFrom(backend_index_, "", &err, nullptr)) {
      PipelineEvent e;
      e.kind = PipelineEvent::Kind::kError;
      e.reason = err;
      Emit(e);
      return;
    }
  }
  if (keyframe_.exchange(false)) {
    force_idr_ = true;
    idr_requested_ = true;
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.keyframe_requests;
  }
  if (fault_.exchange(false) && backend_) backend_->InjectFault();
}

// The encoders run at a constant nominal rate (max_fps): variable frame rate input would cost libx264
// a frame of delay. But a screen changes when it likes, so before each frame the backend hears the
// rate frames really come at, and gives this frame about bitrate x (time since the previous one):
// 30 changes per second get the whole bitrate, and the first frame after a pause (or a refresh of a
// static screen) may spend the bandwidth the pause left unused, up to a floor of max_fps / 6.
// Steady streams use a smoothed interval so jitter does not reconfigure the encoder on every frame.
void Pipeline::AdaptRate(uint64_t now, bool refresh) {
  if (config_.benchmark || !backend_ || !backend_->Caps().framerate_without_idr) return;
  const double cap = std::max<uint32_t>(config_.encoder.fps, 1);
  const double floor = std::max(1.0, cap / 6.0);
  const double dt = last_encode_ns_ != 0 && now > last_encode_ns_ ? static_cast<double>(now - last_encode_ns_) / 1e9 : 1.0 / cap;
  if (ema_dt_ <= 0) ema_dt_ = dt;
  const double use = dt > 1.5 * ema_dt_ ? dt : ema_dt_;
  if (!refresh) ema_dt_ = 0.8 * ema_dt_ + 0.2 * std::min(dt, 4 * ema_dt_);
  const double fps = std::min(cap, std::max(floor, 1.0 / use));
  if (std::abs(fps - rc_fps_) / rc_fps_ < 0.15) return;
  rc_fps_ = fps;
  backend_->SetFramerate(static_cast<uint32_t>(fps + 0.5));
}

int64_t Pipeline::EncodeFrame(const capture::FramePtr& frame, const std::vector<damage::Rect>* damage, bool full_damage,
                              bool refresh, uint64_t wait_start_ns) {
  const uint64_t t0 = MonoNs();
  // A size change: reopen the same backend for the new size (ok | reinit | error, the reinit step).
  if (frame->width != in_w_ || frame->height != in_h_) {
    SetInputSize(frame->width, frame->height);
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.reinits;
    }
    std::string err;
    if (!OpenFrom(backend_index_, "", &err, nullptr)) {
      PipelineEvent e;
      e.kind = PipelineEvent::Kind::kError;
      e.reason = err;
      Emit(e);
      // Taken but not converted: the next frame's damage is relative to this one.
      converter_.Invalidate();
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.dropped_failed;
      return -1;
    }
  }
  for (int attempt = 0; attempt < 8 && backend_; ++attempt) {
    std::string err;
    const uint64_t c0 = MonoNs();
    InputFrame in;
    // A lower rung (output smaller than the capture) scales: on the GPU with the zero-copy import (the
    // VPP writes the smaller surface), else on the CPU (convert.h).
    const bool scaled = config_.encoder.width != frame->width || config_.encoder.height != frame->height;
    if (frame->is_dmabuf() && backend_->Caps().zero_copy_dmabuf) {
      // Zero copy: the backend imports the planes and converts on the GPU (vaapi_backend.cc). The
      // CPU picture no longer stands for the last frame.
      in.dmabuf = frame->dmabuf.get();
      in.dmabuf_width = frame->width;
      in.dmabuf_height = frame->height;
      converter_.Invalidate();
    } else {
      capture::FramePtr src = frame;
      bool full = full_damage;
      if (frame->is_dmabuf()) {
        // A software backend (after a fallback) got a DMA-BUF: readable only when LINEAR
        // (dmabuf_map.h); otherwise capture renegotiates to shared memory and this frame is lost.
        src = MapLinearDmabuf(frame, &err);
        if (!src) {
          source_->RequestSharedMemory(std::string(backend_->Name()) + " cannot read the capture's DMA-BUFs (" + err + ")");
          converter_.Invalidate();
          std::lock_guard<std::mutex> lock(stats_mu_);
          ++stats_.dropped_dmabuf;
          return -1;
        }
        full = true;  // a new mapping each time: the converter cannot tell it holds this picture
      }
      // Only the rows the damage covers are converted again; refreshes (no damage) reuse the picture.
      if (!converter_.Convert(*src, src, backend_->InputFormat(), damage, full, &err,
                              scaled ? config_.encoder.width : 0, scaled ? config_.encoder.height : 0)) {
        PipelineEvent e;
        e.kind = PipelineEvent::Kind::kError;
        e.reason = err;
        Emit(e);
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.dropped_failed;
        return -1;
      }
      AVFrame* const picture = converter_.Picture();
      in.av = picture;
      for (int pl = 0; pl < 3; ++pl) {
        in.planes[pl] = picture->data[pl];
        in.strides[pl] = picture->linesize[pl];
      }
    }
    const uint64_t c1 = MonoNs();
    // 90 kHz from the capture time (CLOCK_MONOTONIC of PipeWire's process callback); a refresh is
    // stamped now. Strictly increasing, as encoders and RTP want.
    const uint64_t when = refresh ? t0 : frame->process_ns;
    if (base_ns_ == 0) base_ns_ = when;
    int64_t pts = static_cast<int64_t>((when - std::min(when, base_ns_)) * 9 / 100'000);
    if (pts <= last_pts_) pts = last_pts_ + 1;
    in.pts_90k = pts;
    in.damage = damage;
    if (scaled && damage != nullptr) {
      // The encoder's ROI is in its own (scaled) coordinates: rects rounded outwards.
      scaled_damage_.clear();
      const double sx = static_cast<double>(config_.encoder.width) / frame->width;
      const double sy = static_cast<double>(config_.encoder.height) / frame->height;
      for (const damage::Rect& r : *damage) {
        const uint32_t x0 = static_cast<uint32_t>(r.x * sx), y0 = static_cast<uint32_t>(r.y * sy);
        const uint32_t x1 = std::min(config_.encoder.width, static_cast<uint32_t>(std::ceil((r.x + r.width) * sx)));
        const uint32_t y1 = std::min(config_.encoder.height, static_cast<uint32_t>(std::ceil((r.y + r.height) * sy)));
        if (x1 > x0 && y1 > y0) scaled_damage_.push_back(damage::Rect{x0, y0, x1 - x0, y1 - y0});
      }
      in.damage = &scaled_damage_;
    }
    in.refresh = refresh;
    AdaptRate(c1, refresh);
    const bool idr = force_idr_;
    EncodedUnit unit;
    const Status s = backend_->Encode(in, idr, &unit, &err);
    const uint64_t e1 = MonoNs();
    if (s == Status::kOk) {
      last_pts_ = pts;
      force_idr_ = false;
      idr_requested_ = false;
      last_encode_ns_ = c1;
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.convert.Add(static_cast<double>(c1 - c0) / 1e3);
      stats_.encode.Add(static_cast<double>(e1 - c1) / 1e3);
      stats_.wait.Add(static_cast<double>(t0 - std::min(t0, wait_start_ns)) / 1e3);
    }
    if (s == Status::kOk && !unit.data.empty()) {
      auto out = std::make_unique<EncodedOutput>();
      h264::ParameterSets sets;
      // Only key units can hold an IDR or parameter sets: P frames (nearly all of them) are not scanned.
      const h264::AuInfo info = unit.keyframe ? h264::Inspect(unit.data.data(), unit.data.size(), &sets) : h264::AuInfo{};
      if (info.has_sps) {
        const std::string plid = h264::ProfileLevelId(sets.sps.data(), sets.sps.size());
        sps_ = sets.sps;
        if (plid != plid_) {
          plid_ = plid;
          {
            std::lock_guard<std::mutex> lock(stats_mu_);
            stats_.profile_level_id = plid;
          }
          PipelineEvent fmt;
          fmt.kind = PipelineEvent::Kind::kFormat;
          fmt.backend = backend_->Name();
          fmt.profile_level_id = plid;
          fmt.width = config_.encoder.width;
          fmt.height = config_.encoder.height;
          Emit(fmt);
        }
      }
      if (info.has_pps) pps_ = sets.pps;
      // An IDR slice, not the encoder's key flag: with intra refresh libx264 flags recovery points
      // as key frames, and the rtc stage needs real IDRs (with SPS/PPS) to start a viewer.
      out->keyframe = info.idr;
      if (out->keyframe && (!info.has_sps || !info.has_pps)) {
        // Every IDR carries SPS and PPS, so a viewer can start from any keyframe.
        out->data.reserve(sps_.size() + pps_.size() + unit.data.size());
        if (!info.has_sps) out->data.insert(out->data.end(), sps_.begin(), sps_.end());
        if (!info.has_pps) out->data.insert(out->data.end(), pps_.begin(), pps_.end());
        out->data.insert(out->data.end(), unit.data.begin(), unit.data.end());
      } else {
        out->data = std::move(unit.data);
      }
      out->refresh = refresh;
      out->seq = ++out_seq_;
      out->source_seq = frame->seq;
      out->width = config_.encoder.width;
      out->height = config_.encoder.height;
      out->capture_wall_ms = WallMsOfMono(refresh ? t0 : frame->process_ns);
      out->encode_us = static_cast<double>(e1 - c1) / 1e3;
      out->convert_us = static_cast<double>(c1 - c0) / 1e3;
      out->wait_us = static_cast<double>(t0 - std::min(t0, wait_start_ns)) / 1e3;
      out->pts_90k = pts;
      // RTP time from the capture clock itself, not from this pipeline's first frame: two encoders of
      // one capture (rungs) stamp the same frame alike, so a viewer moved between them sees a timeline
      // that just goes on. Strictly increasing per pipeline (mod 2^32), as RTP receivers want.
      uint32_t rtp = static_cast<uint32_t>(static_cast<uint64_t>(refresh ? t0 : frame->process_ns) * 9 / 100'000);
      if (out_seq_ > 1 && static_cast<int32_t>(rtp - last_rtp_) <= 0) rtp = last_rtp_ + 1;
      last_rtp_ = rtp;
      out->rtp_90k = rtp;
      out->backend = backend_->Name();
      const size_t bytes = out->data.size();
      const bool key = out->keyframe;
      const bool delivered = sink_->Deliver(std::move(out));
      std::lock_guard<std::mutex> lock(stats_mu_);
      if (delivered) {
        ++stats_.frames_encoded;
        if (refresh) ++stats_.frames_refresh;
        if (key) ++stats_.keyframes;
        stats_.bytes_out += bytes;
      } else {
        // JS is behind: this unit is lost, so the next one must not depend on it.
        ++stats_.dropped_queue_full;
        force_idr_ = true;
      }
      return static_cast<int64_t>(bytes);
    }
    if (s == Status::kOk) return 0;  // the encoder produced nothing for this frame (no delay here)
    // kError / kReinit: this backend is done for. Fall back to the next one and retry the frame.
    const std::string failed = backend_->Name();
    if (s == Status::kReinit) {
      std::string e2;
      if (OpenFrom(backend_index_, "", &e2, nullptr)) continue;
      err = e2;
    }
    std::string e3;
    if (!OpenFrom(backend_index_ + 1, err, &e3, nullptr)) {
      backend_.reset();
      PipelineEvent e;
      e.kind = PipelineEvent::Kind::kError;
      e.reason = failed + " failed (" + err + ") and no other backend could take over: " + e3;
      Emit(e);
    }
  }
  std::lock_guard<std::mutex> lock(stats_mu_);
  ++stats_.dropped_failed;
  return -1;
}

void Pipeline::Run() {
  capture::LatestFrame pending;          // waiting for its max_fps slot
  capture::FramePtr last;                // the last frame encoded (for refreshes)
  uint64_t next_slot_ns = 0;
  uint64_t last_activity_ns = MonoNs();
  uint32_t refreshes = 0;                // since the last real frame
  uint64_t backoff = 1;                  // the refresh interval is refresh_interval_ms x this
  // The wait's cap: on a still screen, bitrate/frame-rate changes and fault injection apply within it.
  // A keyframe request and Stop() kick the wait (FrameMailbox::Kick) and need no poll.
  constexpr uint64_t kMaxWaitNs = 100'000'000;
  constexpr uint64_t kRefineNs = 250'000'000;
  const uint64_t refresh_ns = static_cast<uint64_t>(config_.refresh_interval_ms) * 1'000'000ull;
  const uint64_t max_backoff =
      refresh_ns == 0 ? 1 : std::max<uint64_t>(1, static_cast<uint64_t>(config_.refresh_max_interval_ms) * 1'000'000ull / refresh_ns);
  // The first refresh after a change comes sooner (kRefineNs): with a VBV of one frame a big change
  // arrives coarse, and on a screen that then stays still this pass is what sharpens it. After that:
  // refresh_interval_ms x backoff (see pipeline.h).
  auto next_refresh_ns = [&]() -> uint64_t { return refreshes == 0 ? std::min(refresh_ns, kRefineNs) : refresh_ns * backoff; };
  auto publish_next = [&]() {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.refresh_next_ms = static_cast<uint32_t>(next_refresh_ns() / 1'000'000ull);
  };
  while (!stop_.load()) {
    ApplyControls();
    if (!backend_) break;  // every backend failed: the error was reported
    uint64_t now = MonoNs();
    uint64_t wait = kMaxWaitNs;
    if (pending) wait = next_slot_ns > now ? std::min(wait, next_slot_ns - now) : 0;
    if (!pending && last && idr_requested_) wait = 0;
    if (!pending && last && refresh_ns > 0) {
      const uint64_t due = last_activity_ns + next_refresh_ns();
      wait = due > now ? std::min(wait, due - now) : 0;
    }
    capture::LatestFrame lf = mailbox_->Wait(std::chrono::nanoseconds(wait), stop_);
    if (stop_.load()) break;
    now = MonoNs();
    if (lf) {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.frames_in;
      stats_.dropped_busy += lf.frames_merged;
    }
    if (lf && lf.damage.empty() && lf.damage_source != capture::DamageSource::kFull) {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.dropped_unchanged;
      lf = capture::LatestFrame();
    }
    if (lf) {
      if (pending) {
        // Newest wins: the older pending frame is dropped, its damage carried over.
        std::vector<damage::Rect> merged = std::move(pending.damage);
        damage::Accumulate(&merged, lf.damage, 64);
        lf.damage = std::move(merged);
        if (pending.damage_source == capture::DamageSource::kFull) lf.damage_source = capture::DamageSource::kFull;
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.dropped_rate;
      }
      pending = std::move(lf);
    } else if (!pending && source_->IsClosed()) {
      PipelineEvent e;
      e.kind = PipelineEvent::Kind::kEnded;
      e.reason = "the capture stream closed";
      Emit(e);
      break;
    }
    // Requests that came while we waited apply to the frame we are about to encode.
    ApplyControls();
    if (!backend_) break;
    if (pending && now >= next_slot_ns) {
      const uint64_t fps = std::max<uint32_t>(config_.encoder.fps, 1);
      next_slot_ns = config_.benchmark ? now : now + 1'000'000'000ull / fps;
      capture::LatestFrame f = std::move(pending);
      pending = capture::LatestFrame();
      if (f.frame->width != in_w_ || f.frame->height != in_h_) {
        f.damage_source = capture::DamageSource::kFull;
      }
      idr_requested_ = false;  // this frame is the IDR asked for
      EncodeFrame(f.frame, &f.damage, f.damage_source == capture::DamageSource::kFull, false, f.frame->publish_ns);
      last = f.frame;
      last_activity_ns = MonoNs();
      refreshes = 0;
      backoff = 1;
      publish_next();
    } else if (!pending && last &&
               (idr_requested_ || (refresh_ns > 0 && now >= last_activity_ns + next_refresh_ns()))) {
      // Nothing changed for a while (or a viewer needs an IDR now): encode the same picture again.
      // The first refresh after a change converts the whole frame again (~2 ms at 1080p, once per burst
      // of changes): conversion trusts the compositor's damage, and this bounds what an under-reporting
      // compositor could leave stale to kRefineNs, at no cost on a static screen.
      const bool requested = idr_requested_;
      // Only from a frame whose pixels are still its own: a held capture buffer the producer has
      // reused since (capture/frame.h, Frame::intact) would give newer, maybe half-written pixels;
      // the picture converted from it while it was intact stays then.
      if (refreshes == 0 && !requested && last->intact()) converter_.Invalidate();
      const int64_t bytes = EncodeFrame(last, nullptr, false, true, now);
      idr_requested_ = false;  // answered (or failed: force_idr_ still makes the next frame an IDR)
      last_activity_ns = MonoNs();
      if (requested) {
        // An IDR of a static screen is as coarse as a big change: refine it like one (no re-conversion
        // needed: the picture is current).
        refreshes = 0;
        backoff = 1;
      } else {
        ++refreshes;
        const bool converged = bytes >= 0 && static_cast<size_t>(bytes) <= RefreshConvergedBytes(last->width, last->height);
        backoff = converged ? std::min(backoff * 2, max_backoff) : 1;
        if (converged) {
          std::lock_guard<std::mutex> lock(stats_mu_);
          ++stats_.refresh_converged;
        }
      }
      publish_next();
    }
  }
}

}  // namespace wl::encode
