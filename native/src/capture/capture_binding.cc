// JS surface of the capture stage: class PipeWireCapture (see native/index.d.ts).
//
// Native -> JS delivery: the capture thread never touches JS values. It records what happened in an
// EventChannel (a small bounded queue for state/format changes and a keep-latest slot for "a frame is
// available") and wakes JS through a ThreadSafeFunction at most once until JS has drained the channel,
// so at 60 fps with a busy JS thread the TSFN queue holds at most one call.
#include "capture/capture_binding.h"

#include <cstdio>
#include <cstring>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>

#include "capture/pw_capture.h"

namespace wl::capture {
namespace {

constexpr size_t kMaxQueuedEvents = 32;  // state/format changes are rare; beyond this the oldest go
constexpr size_t kMaxRectsToJs = 64;

struct StateEvent {
  bool is_format = false;
  StreamState state = StreamState::kConnecting;
  std::string message;
  NegotiatedFormat format;
};

struct FrameNote {
  uint64_t seq = 0;
  uint32_t width = 0, height = 0;
  std::vector<damage::Rect> damage;
  DamageSource source = DamageSource::kFull;
  double ratio = 0;
  int64_t pts_ns = -1;
  double latency_us = 0;
  uint64_t coalesced = 0;  // frame notes replaced in the slot before JS read them
};

class EventChannel;
void CallJs(Napi::Env env, Napi::Function callback, std::shared_ptr<EventChannel>* ctx, void* data);
using Tsfn = Napi::TypedThreadSafeFunction<std::shared_ptr<EventChannel>, void, CallJs>;

class EventChannel final : public EventSink {
 public:
  void SetTsfn(Tsfn tsfn) { tsfn_ = tsfn; }

  void OnStateChanged(StreamState state, const std::string& message) override {
    StateEvent e;
    e.state = state;
    e.message = message;
    Push(std::move(e));
  }
  void OnFormatChanged(const NegotiatedFormat& format) override {
    StateEvent e;
    e.is_format = true;
    e.format = format;
    Push(std::move(e));
  }
  void OnFrameAvailable(const FramePtr& frame) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      FrameNote n;
      n.seq = frame->seq;
      n.width = frame->width;
      n.height = frame->height;
      n.source = frame->damage_source;
      n.damage = frame->damage;
      if (frame_) {
        // JS has not read the previous note yet: keep the newest frame, but report all that changed.
        n.coalesced = frame_->coalesced + 1;
        if (frame_->source == DamageSource::kFull && frame_->width == n.width && frame_->height == n.height)
          n.source = DamageSource::kFull;
        if (n.source == DamageSource::kFull || frame_->width != n.width || frame_->height != n.height) {
          n.damage.assign(1, damage::Rect{0, 0, n.width, n.height});
        } else {
          damage::Accumulate(&n.damage, frame_->damage, kMaxRectsToJs);
        }
      }
      if (n.damage.size() > kMaxRectsToJs) n.damage.assign(1, damage::BoundingBox(n.damage));
      n.ratio = damage::AreaRatio(n.damage, n.width, n.height);
      n.pts_ns = frame->pts_ns;
      n.latency_us = static_cast<double>(frame->publish_ns - frame->process_ns) / 1000.0;
      frame_ = std::move(n);
    }
    Wake();
  }

  void OnCursorChanged(const CursorInfo& cursor) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cursor_ = cursor;  // keep-latest: only the newest position matters
    }
    Wake();
  }

  /** JS thread: everything queued since the last drain. */
  void Drain(std::deque<StateEvent>* events, std::optional<FrameNote>* frame, std::optional<CursorInfo>* cursor) {
    wake_pending_.store(false);  // before reading, so a push racing with us wakes again
    std::lock_guard<std::mutex> lock(mu_);
    events->swap(events_);
    *frame = std::move(frame_);
    frame_.reset();
    *cursor = std::move(cursor_);
    cursor_.reset();
  }

  void Release() {
    std::lock_guard<std::mutex> lock(tsfn_mu_);
    if (released_) return;
    released_ = true;
    tsfn_.Release();
  }

  /** The TSFN is gone (released, or torn down with the environment at exit): never touch it again. */
  void MarkFinalized() {
    std::lock_guard<std::mutex> lock(tsfn_mu_);
    released_ = true;
  }

 private:
  void Push(StateEvent e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (events_.size() >= kMaxQueuedEvents) events_.pop_front();
      events_.push_back(std::move(e));
    }
    Wake();
  }
  void Wake() {
    if (wake_pending_.exchange(true)) return;  // a call is already on its way; it will drain everything
    std::lock_guard<std::mutex> lock(tsfn_mu_);
    if (released_ || tsfn_.NonBlockingCall() != napi_ok) wake_pending_.store(false);
  }

  std::mutex mu_;
  std::deque<StateEvent> events_;
  std::optional<FrameNote> frame_;
  std::optional<CursorInfo> cursor_;
  std::atomic<bool> wake_pending_{false};
  std::mutex tsfn_mu_;
  bool released_ = false;
  Tsfn tsfn_;
};

Napi::Object RectToJs(Napi::Env env, const damage::Rect& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("x", r.x);
  o.Set("y", r.y);
  o.Set("width", r.width);
  o.Set("height", r.height);
  return o;
}

Napi::Array RectsToJs(Napi::Env env, const std::vector<damage::Rect>& rects) {
  Napi::Array a = Napi::Array::New(env, rects.size());
  for (size_t i = 0; i < rects.size(); ++i) a.Set(static_cast<uint32_t>(i), RectToJs(env, rects[i]));
  return a;
}

Napi::Value FormatToJs(Napi::Env env, const NegotiatedFormat& f) {
  if (!f.valid) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("width", f.width);
  o.Set("height", f.height);
  o.Set("stride", f.stride);
  o.Set("format", f.format_name);
  o.Set("bufferType", f.buffer_type.empty() ? env.Null() : Napi::String::New(env, f.buffer_type));
  o.Set("buffers", f.buffers);
  o.Set("dmabuf", f.dmabuf);
  if (f.dmabuf) {
    char mod[24];
    std::snprintf(mod, sizeof(mod), "0x%016llx", static_cast<unsigned long long>(f.modifier));
    o.Set("modifier", mod);
  }
  o.Set("framerate", Napi::Number::New(env, f.framerate_den ? static_cast<double>(f.framerate_num) / f.framerate_den : 0));
  o.Set("maxFramerate",
        Napi::Number::New(env, f.max_framerate_den ? static_cast<double>(f.max_framerate_num) / f.max_framerate_den : 0));
  return o;
}

Napi::Object CursorToJs(Napi::Env env, const CursorInfo& c) {
  Napi::Object cur = Napi::Object::New(env);
  cur.Set("id", c.id);
  cur.Set("x", c.x);
  cur.Set("y", c.y);
  cur.Set("hotspotX", c.hotspot_x);
  cur.Set("hotspotY", c.hotspot_y);
  cur.Set("shapeWidth", c.shape_width);
  cur.Set("shapeHeight", c.shape_height);
  cur.Set("shapeSerial", Napi::Number::New(env, static_cast<double>(c.shape_serial)));
  return cur;
}

void CallJs(Napi::Env env, Napi::Function callback, std::shared_ptr<EventChannel>* ctx, void* /*data*/) {
  if (env == nullptr || ctx == nullptr) return;  // the TSFN is being torn down
  std::deque<StateEvent> events;
  std::optional<FrameNote> frame;
  std::optional<CursorInfo> cursor;
  (*ctx)->Drain(&events, &frame, &cursor);
  if (events.empty() && !frame && !cursor) return;
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  for (const StateEvent& e : events) {
    Napi::Object o = Napi::Object::New(env);
    if (e.is_format) {
      o.Set("type", "format");
      o.Set("format", FormatToJs(env, e.format));
    } else {
      o.Set("type", "state");
      o.Set("state", StreamStateName(e.state));
      o.Set("message", e.message);
    }
    out.Set(i++, o);
  }
  if (frame) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", "frame");
    o.Set("seq", Napi::Number::New(env, static_cast<double>(frame->seq)));
    o.Set("width", frame->width);
    o.Set("height", frame->height);
    o.Set("damage", RectsToJs(env, frame->damage));
    o.Set("damageRatio", frame->ratio);
    o.Set("damageSource", DamageSourceName(frame->source));
    o.Set("ptsNs", Napi::Number::New(env, static_cast<double>(frame->pts_ns)));
    o.Set("latencyUs", frame->latency_us);
    o.Set("coalesced", Napi::Number::New(env, static_cast<double>(frame->coalesced)));
    out.Set(i++, o);
  }
  if (cursor) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", "cursor");
    o.Set("cursor", CursorToJs(env, *cursor));
    out.Set(i++, o);
  }
  // A throwing handler surfaces as an uncaught exception in JS (the TS side uses safeEmit, so this
  // is a bug in the dispatcher itself), never as a C++ exception unwinding into libuv.
  try {
    callback.Call({out});
  } catch (const Napi::Error& e) {
    e.ThrowAsJavaScriptException();
  }
}

// Runs after Release(), or when the environment is torn down first (process.exit() with a capture
// still open): in that case the wrapper's destructor must not release the TSFN again.
void FinalizeTsfn(Napi::Env, void*, std::shared_ptr<EventChannel>* ctx) {
  (*ctx)->MarkFinalized();
  delete ctx;
}

class CaptureWrap final : public Napi::ObjectWrap<CaptureWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PipeWireCapture",
                       {
                           InstanceMethod<&CaptureWrap::Snapshot>("snapshot"),
                           InstanceMethod<&CaptureWrap::CopyFrame>("copyFrame"),
                           InstanceMethod<&CaptureWrap::CursorShape>("cursorShape"),
                           InstanceMethod<&CaptureWrap::Close>("close"),
                           InstanceAccessor<&CaptureWrap::Closed>("closed"),
                       });
  }

  // new PipeWireCapture({ fd, nodeId, tileSize, name, dmabufDevice?, dmabufOffReason? }, onEvent). Arguments were validated in TS
  // (agent/capture/capture-stream.ts); only the shape is checked here.
  explicit CaptureWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CaptureWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
      throw Napi::TypeError::New(env, "PipeWireCapture(options, onEvent)");
    Napi::Object o = info[0].As<Napi::Object>();
    CaptureOptions opts;
    opts.fd = o.Get("fd").As<Napi::Number>().Int32Value();
    opts.node_id = o.Get("nodeId").As<Napi::Number>().Uint32Value();
    opts.tile_size = o.Get("tileSize").As<Napi::Number>().Uint32Value();
    if (o.Has("name") && o.Get("name").IsString()) opts.name = o.Get("name").As<Napi::String>().Utf8Value();
    if (o.Has("dmabufDevice") && o.Get("dmabufDevice").IsString())
      opts.dmabuf_device = o.Get("dmabufDevice").As<Napi::String>().Utf8Value();
    if (o.Has("dmabufOffReason") && o.Get("dmabufOffReason").IsString())
      opts.dmabuf_off_reason = o.Get("dmabufOffReason").As<Napi::String>().Utf8Value();

    channel_ = std::make_shared<EventChannel>();
    auto* ctx = new std::shared_ptr<EventChannel>(channel_);
    Tsfn tsfn = Tsfn::New(env, info[1].As<Napi::Function>(), "wl-webrtc capture events", 1, 1, ctx, FinalizeTsfn,
                          static_cast<void*>(nullptr));
    channel_->SetTsfn(tsfn);
    std::string error;
    capture_ = PipeWireCapture::Create(opts, channel_.get(), &error);
    if (!capture_) {
      channel_->Release();
      closed_ = true;
      throw Napi::Error::New(env, error);
    }
    napi_type_tag_object(env, info.This(), &kCaptureTag);  // lets FrameSourceOf recognise us
  }

  ~CaptureWrap() override { DoClose(); }

  std::shared_ptr<PipeWireCapture> native() const { return capture_; }
  static constexpr napi_type_tag kCaptureTag = {0x5b0c2e8f9a7d4c13ull, 0x86f1d2e3a4b5c6d7ull};

 private:
  void DoClose() {
    if (closed_) return;
    closed_ = true;
    if (capture_) capture_->Close();  // joins the capture thread: nothing calls the channel after this
    if (channel_) channel_->Release();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    DoClose();
    return info.Env().Undefined();
  }

  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), closed_); }

  Napi::Value Snapshot(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    wl::capture::Snapshot s = capture_->GetSnapshot();
    Napi::Object o = Napi::Object::New(env);
    o.Set("state", StreamStateName(s.state));
    o.Set("message", s.message);
    o.Set("format", FormatToJs(env, s.format));
    Napi::Object c = Napi::Object::New(env);
    auto num = [&](const char* k, uint64_t v) { c.Set(k, Napi::Number::New(env, static_cast<double>(v))); };
    num("framesReceived", s.counters.frames_received);
    num("framesDelivered", s.counters.frames_delivered);
    num("framesDropped", s.counters.frames_dropped);
    num("framesUnchanged", s.counters.frames_unchanged);
    num("framesEmpty", s.counters.frames_empty);
    num("framesCorrupted", s.counters.frames_corrupted);
    num("buffersSkipped", s.counters.buffers_skipped);
    num("framesNoSlot", s.counters.frames_no_slot);
    num("framesHeld", s.counters.frames_held);
    num("framesCopied", s.counters.frames_copied);
    num("framesCopiedShort", s.counters.frames_copied_short);
    num("buffersHeld", s.counters.buffers_held);
    num("buffersHeldMax", s.counters.buffers_held_max);
    num("buffersRedeliveredHeld", s.counters.buffers_redelivered_held);
    num("buffersRemovedHeld", s.counters.buffers_removed_held);
    num("referenceLost", s.counters.reference_lost);
    num("renegotiations", s.counters.renegotiations);
    o.Set("counters", c);
    Napi::Object d = Napi::Object::New(env);
    d.Set("seq", Napi::Number::New(env, static_cast<double>(s.last_seq)));
    d.Set("rects", RectsToJs(env, s.last_damage));
    d.Set("ratio", s.last_damage_ratio);
    d.Set("source", DamageSourceName(s.last_damage_source));
    o.Set("damage", d);
    Napi::Object t = Napi::Object::New(env);
    t.Set("count", Napi::Number::New(env, static_cast<double>(s.timing.count)));
    t.Set("minUs", s.timing.min_us);
    t.Set("avgUs", s.timing.count ? s.timing.sum_us / static_cast<double>(s.timing.count) : 0.0);
    t.Set("maxUs", s.timing.max_us);
    Napi::Array bounds = Napi::Array::New(env, Timing::kBucketsUs.size());
    for (size_t i = 0; i < Timing::kBucketsUs.size(); ++i) bounds.Set(static_cast<uint32_t>(i), Timing::kBucketsUs[i]);
    Napi::Array buckets = Napi::Array::New(env, s.timing.buckets.size());
    for (size_t i = 0; i < s.timing.buckets.size(); ++i)
      buckets.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(s.timing.buckets[i])));
    t.Set("bucketBoundsUs", bounds);
    t.Set("buckets", buckets);
    o.Set("processToAvailable", t);
    if (s.cursor.present) {
      o.Set("cursor", CursorToJs(env, s.cursor));
    } else {
      o.Set("cursor", env.Null());
    }
    Napi::Object dm = Napi::Object::New(env);
    dm.Set("offered", s.dmabuf_offered);
    dm.Set("reason", s.dmabuf_reason);
    o.Set("dmabuf", dm);
    return o;
  }

  Napi::Value CopyFrame(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    FramePtr f = capture_->PeekLatest();
    // A DMA-BUF frame has no CPU copy to give (mapping GPU memory for a snapshot is not worth it:
    // tiled modifiers would not even read as a picture).
    if (!f || f->is_dmabuf()) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    // Packed (width * 4 per row) whatever the frame's own stride (a held buffer has the producer's).
    const size_t row = static_cast<size_t>(f->width) * 4;
    Napi::Buffer<uint8_t> data = Napi::Buffer<uint8_t>::New(env, row * f->height);
    for (uint32_t y = 0; y < f->height; ++y) std::memcpy(data.Data() + row * y, f->data() + static_cast<size_t>(f->stride) * y, row);
    o.Set("data", data);
    o.Set("width", f->width);
    o.Set("height", f->height);
    o.Set("stride", static_cast<uint32_t>(row));
    o.Set("format", f->format_name);
    o.Set("seq", Napi::Number::New(env, static_cast<double>(f->seq)));
    o.Set("ptsNs", Napi::Number::New(env, static_cast<double>(f->pts_ns)));
    o.Set("damage", RectsToJs(env, f->damage));
    o.Set("damageSource", DamageSourceName(f->damage_source));
    o.Set("crop", f->has_crop ? static_cast<Napi::Value>(RectToJs(env, f->crop)) : env.Null());
    return o;
  }

  Napi::Value CursorShape(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    wl::capture::Snapshot s = capture_->GetSnapshot();
    if (!s.cursor.present || s.cursor.shape_rgba.empty()) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("width", s.cursor.shape_width);
    o.Set("height", s.cursor.shape_height);
    o.Set("serial", Napi::Number::New(env, static_cast<double>(s.cursor.shape_serial)));
    o.Set("rgba", Napi::Buffer<uint8_t>::Copy(env, s.cursor.shape_rgba.data(), s.cursor.shape_rgba.size()));
    return o;
  }

  std::shared_ptr<EventChannel> channel_;
  std::shared_ptr<PipeWireCapture> capture_;  // shared with the encoder (FrameSourceOf)
  bool closed_ = false;
};

}  // namespace

void InitBinding(Napi::Env env, Napi::Object exports) { exports.Set("PipeWireCapture", CaptureWrap::Define(env)); }

std::shared_ptr<LatestFrameSource> FrameSourceOf(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) return nullptr;
  bool tagged = false;
  if (napi_check_object_type_tag(env, value, &CaptureWrap::kCaptureTag, &tagged) != napi_ok || !tagged) return nullptr;
  return CaptureWrap::Unwrap(value.As<Napi::Object>())->native();
}

}  // namespace wl::capture
