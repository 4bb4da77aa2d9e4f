// JS surface of the encode stage: NativeVideoEncoder, FrameFeeder, probeEncoders (native/index.d.ts).
//
// Native -> JS: encoded access units travel through a TypedThreadSafeFunction whose queue is bounded
// (kMaxQueuedUnits). When it is full the unit is dropped and the pipeline forces the next frame to be
// an IDR (the decoder would otherwise reference a frame it never got). Rare control events (format,
// fallback, error) wait in a small deque drained by whichever call reaches JS next, so they are
// never lost to a full queue.
#include "encode/encode_binding.h"

#include <deque>
#include <memory>
#include <mutex>

extern "C" {
#include <drm_fourcc.h>
#include <libavutil/log.h>
}

#include "capture/capture_binding.h"
#include "encode/backend.h"
#include "encode/frame_feeder.h"
#include "encode/pipeline.h"

namespace wl::encode {
namespace {

constexpr size_t kMaxQueuedUnits = 8;   // ~130 ms at 60 fps: beyond that JS is stalled, drop
constexpr size_t kMaxQueuedEvents = 64;
const napi_type_tag kFeederTag = {0x8d2a6b0e4f1c4a57ull, 0xb3e1c0a9d2f45e61ull};

class Channel;
void CallJs(Napi::Env env, Napi::Function callback, std::shared_ptr<Channel>* ctx, EncodedOutput* data);
using Tsfn = Napi::TypedThreadSafeFunction<std::shared_ptr<Channel>, EncodedOutput, CallJs>;

class Channel final : public PipelineSink {
 public:
  void SetTsfn(Tsfn tsfn) { tsfn_ = tsfn; }

  bool Deliver(std::unique_ptr<EncodedOutput> out) override {
    std::lock_guard<std::mutex> lock(tsfn_mu_);
    if (released_) return false;
    EncodedOutput* raw = out.release();
    if (tsfn_.NonBlockingCall(raw) != napi_ok) {
      delete raw;  // napi_queue_full: the bounded queue did its job
      return false;
    }
    return true;
  }

  void Notify(PipelineEvent e) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (events_.size() >= kMaxQueuedEvents) events_.pop_front();
      events_.push_back(std::move(e));
    }
    std::lock_guard<std::mutex> lock(tsfn_mu_);
    // A null call only drains the events; if the queue is full, a queued frame will drain them.
    if (!released_) tsfn_.NonBlockingCall(nullptr);
  }

  std::deque<PipelineEvent> Drain() {
    std::lock_guard<std::mutex> lock(mu_);
    std::deque<PipelineEvent> out;
    out.swap(events_);
    return out;
  }

  void Release() {
    std::lock_guard<std::mutex> lock(tsfn_mu_);
    if (released_) return;
    released_ = true;
    tsfn_.Release();
  }

 private:
  std::mutex mu_;
  std::deque<PipelineEvent> events_;
  std::mutex tsfn_mu_;
  bool released_ = false;
  Tsfn tsfn_;
};

Napi::Object EventToJs(Napi::Env env, const PipelineEvent& e) {
  Napi::Object o = Napi::Object::New(env);
  switch (e.kind) {
    case PipelineEvent::Kind::kFormat:
      o.Set("type", "format");
      o.Set("backend", e.backend);
      o.Set("profileLevelId", e.profile_level_id);
      o.Set("width", e.width);
      o.Set("height", e.height);
      break;
    case PipelineEvent::Kind::kFallback:
      o.Set("type", "fallback");
      o.Set("from", e.from);
      o.Set("to", e.to);
      o.Set("reason", e.reason);
      break;
    case PipelineEvent::Kind::kError:
      o.Set("type", "error");
      o.Set("message", e.reason);
      break;
    case PipelineEvent::Kind::kEnded:
      o.Set("type", "ended");
      o.Set("message", e.reason);
      break;
  }
  return o;
}

void CallJs(Napi::Env env, Napi::Function callback, std::shared_ptr<Channel>* ctx, EncodedOutput* data) {
  std::unique_ptr<EncodedOutput> out(data);
  if (env == nullptr || ctx == nullptr) return;  // being torn down: just free
  std::deque<PipelineEvent> events = (*ctx)->Drain();
  if (events.empty() && !out) return;
  Napi::Array arr = Napi::Array::New(env);
  uint32_t i = 0;
  for (const PipelineEvent& e : events) arr.Set(i++, EventToJs(env, e));
  if (out) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", "frame");
    // The bytes move into the Buffer without a copy; the vector is freed with it.
    auto* vec = new std::vector<uint8_t>(std::move(out->data));
    o.Set("data", Napi::Buffer<uint8_t>::New(env, vec->data(), vec->size(),
                                             [](Napi::Env, uint8_t*, std::vector<uint8_t>* v) { delete v; }, vec));
    o.Set("keyframe", out->keyframe);
    o.Set("refresh", out->refresh);
    o.Set("seq", Napi::Number::New(env, static_cast<double>(out->seq)));
    o.Set("sourceSeq", Napi::Number::New(env, static_cast<double>(out->source_seq)));
    o.Set("width", out->width);
    o.Set("height", out->height);
    o.Set("captureTimeMs", out->capture_wall_ms);
    o.Set("encodeUs", out->encode_us);
    o.Set("waitUs", out->wait_us);
    o.Set("convertUs", out->convert_us);
    o.Set("rtpTimestamp", Napi::Number::New(env, static_cast<double>(out->rtp_90k)));
    o.Set("backend", out->backend);
    arr.Set(i++, o);
  }
  try {
    callback.Call({arr});
  } catch (const Napi::Error& e) {
    e.ThrowAsJavaScriptException();
  }
}

void FinalizeTsfn(Napi::Env, void*, std::shared_ptr<Channel>* ctx) { delete ctx; }

Napi::Object HistogramToJs(Napi::Env env, const Histogram& h) {
  Napi::Object t = Napi::Object::New(env);
  t.Set("count", Napi::Number::New(env, static_cast<double>(h.count)));
  t.Set("sumUs", h.sum_us);
  t.Set("minUs", h.min_us);
  t.Set("avgUs", h.count ? h.sum_us / static_cast<double>(h.count) : 0.0);
  t.Set("maxUs", h.max_us);
  Napi::Array bounds = Napi::Array::New(env, Histogram::kBoundsUs.size());
  for (size_t i = 0; i < Histogram::kBoundsUs.size(); ++i) bounds.Set(static_cast<uint32_t>(i), Histogram::kBoundsUs[i]);
  Napi::Array buckets = Napi::Array::New(env, h.buckets.size());
  for (size_t i = 0; i < h.buckets.size(); ++i)
    buckets.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(h.buckets[i])));
  t.Set("bucketBoundsUs", bounds);
  t.Set("buckets", buckets);
  return t;
}

std::vector<damage::Rect> RectsFromJs(Napi::Value v) {
  std::vector<damage::Rect> out;
  if (!v.IsArray()) return out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Object r = a.Get(i).As<Napi::Object>();
    out.push_back(damage::Rect{r.Get("x").As<Napi::Number>().Uint32Value(), r.Get("y").As<Napi::Number>().Uint32Value(),
                               r.Get("width").As<Napi::Number>().Uint32Value(),
                               r.Get("height").As<Napi::Number>().Uint32Value()});
  }
  return out;
}

// ---- FrameFeeder ------------------------------------------------------------------------------------

class FeederWrap final : public Napi::ObjectWrap<FeederWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FrameFeeder",
                       {
                           InstanceMethod<&FeederWrap::Push>("push"),
                           InstanceMethod<&FeederWrap::Load>("load"),
                           InstanceMethod<&FeederWrap::PushMemfdAsDmabuf>("pushMemfdAsDmabuf"),
                           InstanceMethod<&FeederWrap::SharedMemoryRequests>("sharedMemoryRequests"),
                           InstanceMethod<&FeederWrap::Play>("play"),
                           InstanceMethod<&FeederWrap::Close>("close"),
                           InstanceAccessor<&FeederWrap::Played>("played"),
                           InstanceAccessor<&FeederWrap::Playing>("playing"),
                           InstanceAccessor<&FeederWrap::Closed>("closed"),
                       });
  }
  explicit FeederWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FeederWrap>(info) {
    feeder_ = std::make_shared<FrameFeeder>();
    napi_type_tag_object(info.Env(), info.This(), &kFeederTag);
  }
  ~FeederWrap() override { feeder_->Close(); }
  std::shared_ptr<FrameFeeder> feeder() const { return feeder_; }

 private:
  // push(data, width, height, stride, format, damage | null)
  Napi::Value Push(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "push(data, width, height, stride, format, damage)");
    auto buf = info[0].As<Napi::Buffer<uint8_t>>();
    const uint32_t w = info[1].As<Napi::Number>().Uint32Value(), h = info[2].As<Napi::Number>().Uint32Value();
    const uint32_t stride = info[3].As<Napi::Number>().Uint32Value();
    if (static_cast<uint64_t>(stride) * h > buf.Length() || stride < w * 4) throw Napi::RangeError::New(env, "buffer too small");
    feeder_->Push(buf.Data(), w, h, stride, info[4].As<Napi::String>().Utf8Value(),
                  info.Length() > 5 ? RectsFromJs(info[5]) : std::vector<damage::Rect>());
    return env.Undefined();
  }
  // pushMemfdAsDmabuf(data, width, height, stride, format, "linear" | "x-tiled" | "implicit")
  Napi::Value PushMemfdAsDmabuf(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 6 || !info[0].IsBuffer() || !info[5].IsString())
      throw Napi::TypeError::New(env, "pushMemfdAsDmabuf(data, width, height, stride, format, modifier)");
    auto buf = info[0].As<Napi::Buffer<uint8_t>>();
    const uint32_t w = info[1].As<Napi::Number>().Uint32Value(), h = info[2].As<Napi::Number>().Uint32Value();
    const uint32_t stride = info[3].As<Napi::Number>().Uint32Value();
    if (static_cast<uint64_t>(stride) * h > buf.Length() || stride < w * 4) throw Napi::RangeError::New(env, "buffer too small");
    const std::string format = info[4].As<Napi::String>().Utf8Value();
    if (format != "BGRx") throw Napi::TypeError::New(env, "pushMemfdAsDmabuf: BGRx only");
    const std::string mod = info[5].As<Napi::String>().Utf8Value();
    uint64_t modifier;
    if (mod == "linear") modifier = DRM_FORMAT_MOD_LINEAR;
    else if (mod == "x-tiled") modifier = I915_FORMAT_MOD_X_TILED;
    else if (mod == "implicit") modifier = DRM_FORMAT_MOD_INVALID;
    else throw Napi::TypeError::New(env, "pushMemfdAsDmabuf: modifier must be linear, x-tiled or implicit");
    std::string error;
    if (!feeder_->PushMemfdAsDmabuf(buf.Data(), w, h, stride, format, DRM_FORMAT_XRGB8888, modifier, &error))
      throw Napi::Error::New(env, error);
    return env.Undefined();
  }
  Napi::Value SharedMemoryRequests(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string reason;
    const uint64_t n = feeder_->SharedMemoryRequests(&reason);
    Napi::Object o = Napi::Object::New(env);
    o.Set("count", Napi::Number::New(env, static_cast<double>(n)));
    o.Set("lastReason", reason);
    return o;
  }
  // load(path, width, height, format, count) -> frames loaded
  Napi::Value Load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string error;
    const size_t n = feeder_->Load(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Number>().Uint32Value(),
                                   info[2].As<Napi::Number>().Uint32Value(), info[3].As<Napi::String>().Utf8Value(),
                                   info[4].As<Napi::Number>().Uint32Value(), &error);
    if (!error.empty()) throw Napi::Error::New(env, error);
    return Napi::Number::New(env, static_cast<double>(n));
  }
  Napi::Value Play(const Napi::CallbackInfo& info) {
    feeder_->Play(info[0].As<Napi::Number>().DoubleValue(), info.Length() > 1 ? info[1].As<Napi::Number>().Uint32Value() : 1);
    return info.Env().Undefined();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    feeder_->Close();
    return info.Env().Undefined();
  }
  Napi::Value Played(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(feeder_->Played())); }
  Napi::Value Playing(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), feeder_->Playing()); }
  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), feeder_->IsClosed()); }

  std::shared_ptr<FrameFeeder> feeder_;
};

std::shared_ptr<capture::LatestFrameSource> SourceOf(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) return nullptr;
  bool is_feeder = false;
  napi_check_object_type_tag(env, v, &kFeederTag, &is_feeder);
  if (is_feeder) return FeederWrap::Unwrap(v.As<Napi::Object>())->feeder();
  return capture::FrameSourceOf(env, v);
}

// ---- NativeVideoEncoder -----------------------------------------------------------------------------

class EncoderWrap final : public Napi::ObjectWrap<EncoderWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeVideoEncoder",
                       {
                           InstanceMethod<&EncoderWrap::RequestKeyframe>("requestKeyframe"),
                           InstanceMethod<&EncoderWrap::SetBitrate>("setBitrate"),
                           InstanceMethod<&EncoderWrap::SetFramerate>("setFramerate"),
                           InstanceMethod<&EncoderWrap::InjectFault>("injectFault"),
                           InstanceMethod<&EncoderWrap::Stats>("stats"),
                           InstanceMethod<&EncoderWrap::Close>("close"),
                           InstanceAccessor<&EncoderWrap::Closed>("closed"),
                           InstanceAccessor<&EncoderWrap::OpenEvents>("openEvents"),
                       });
  }

  // new NativeVideoEncoder(source, options, onEvents). Options were validated in TS
  // (agent/encode/encoder.ts); only the shape is checked here.
  explicit EncoderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EncoderWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[1].IsObject() || !info[2].IsFunction())
      throw Napi::TypeError::New(env, "NativeVideoEncoder(source, options, onEvents)");
    std::shared_ptr<capture::LatestFrameSource> source = SourceOf(env, info[0]);
    if (!source) throw Napi::TypeError::New(env, "NativeVideoEncoder: source must be a PipeWireCapture or a FrameFeeder");
    Napi::Object o = info[1].As<Napi::Object>();
    PipelineConfig cfg;
    Napi::Array names = o.Get("backends").As<Napi::Array>();
    for (uint32_t i = 0; i < names.Length(); ++i) cfg.backends.push_back(names.Get(i).As<Napi::String>().Utf8Value());
    cfg.encoder.width = o.Get("width").As<Napi::Number>().Uint32Value();
    cfg.encoder.height = o.Get("height").As<Napi::Number>().Uint32Value();
    cfg.encoder.bitrate_bps = o.Get("bitrateBps").As<Napi::Number>().Uint32Value();
    cfg.encoder.fps = o.Get("fps").As<Napi::Number>().Uint32Value();
    cfg.encoder.profile = o.Get("profile").As<Napi::String>().Utf8Value() == "main" ? Profile::kMain : Profile::kConstrainedBaseline;
    cfg.encoder.preset = o.Get("preset").As<Napi::String>().Utf8Value();
    cfg.encoder.intra_refresh = o.Get("intraRefresh").As<Napi::Boolean>().Value();
    cfg.encoder.damage_roi = o.Get("damageRoi").As<Napi::Boolean>().Value();
    if (o.Has("threads") && o.Get("threads").IsNumber()) cfg.encoder.threads = o.Get("threads").As<Napi::Number>().Uint32Value();
    cfg.refresh_interval_ms = o.Get("refreshIntervalMs").As<Napi::Number>().Uint32Value();
    if (o.Has("refreshMaxIntervalMs") && o.Get("refreshMaxIntervalMs").IsNumber())
      cfg.refresh_max_interval_ms = o.Get("refreshMaxIntervalMs").As<Napi::Number>().Uint32Value();
    cfg.benchmark = o.Has("benchmark") && o.Get("benchmark").ToBoolean().Value();
    if (o.Has("outputScale") && o.Get("outputScale").IsNumber()) cfg.output_scale = o.Get("outputScale").As<Napi::Number>().DoubleValue();

    channel_ = std::make_shared<Channel>();
    auto* ctx = new std::shared_ptr<Channel>(channel_);
    Tsfn tsfn = Tsfn::New(env, info[2].As<Napi::Function>(), "wl-webrtc encoder", kMaxQueuedUnits, 1, ctx, FinalizeTsfn,
                          static_cast<void*>(nullptr));
    channel_->SetTsfn(tsfn);
    std::string error;
    std::vector<PipelineEvent> events;
    pipeline_ = Pipeline::Create(source, cfg, channel_.get(), &error, &events);
    Napi::Array arr = Napi::Array::New(env);
    for (size_t i = 0; i < events.size(); ++i) arr.Set(static_cast<uint32_t>(i), EventToJs(env, events[i]));
    open_events_ = Napi::Persistent(arr);
    if (!pipeline_) {
      channel_->Release();
      closed_ = true;
      Napi::Error err = Napi::Error::New(env, error);
      err.Set("openEvents", arr);
      throw err;
    }
    pipeline_->Start();
  }

  ~EncoderWrap() override { DoClose(); }

 private:
  void DoClose() {
    if (closed_) return;
    closed_ = true;
    if (pipeline_) pipeline_->Stop();  // joins the encoder thread: no Deliver/Notify after this
    if (channel_) channel_->Release();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    DoClose();
    return info.Env().Undefined();
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), closed_); }
  Napi::Value OpenEvents(const Napi::CallbackInfo& info) { return open_events_.Value(); }
  Napi::Value RequestKeyframe(const Napi::CallbackInfo& info) {
    if (!closed_) pipeline_->RequestKeyframe();
    return info.Env().Undefined();
  }
  Napi::Value SetBitrate(const Napi::CallbackInfo& info) {
    if (!closed_) pipeline_->SetBitrate(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  }
  Napi::Value SetFramerate(const Napi::CallbackInfo& info) {
    if (!closed_) pipeline_->SetFramerate(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  }
  Napi::Value InjectFault(const Napi::CallbackInfo& info) {
    if (!closed_) pipeline_->InjectFault();
    return info.Env().Undefined();
  }
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const PipelineStats s = pipeline_->Stats();
    Napi::Object o = Napi::Object::New(env);
    auto num = [&](const char* k, uint64_t v) { o.Set(k, Napi::Number::New(env, static_cast<double>(v))); };
    num("framesIn", s.frames_in);
    num("framesEncoded", s.frames_encoded);
    num("framesRefresh", s.frames_refresh);
    num("refreshConverged", s.refresh_converged);
    num("refreshNextMs", s.refresh_next_ms);
    num("refreshConvergedBytes", RefreshConvergedBytes(s.width, s.height));
    num("keyframes", s.keyframes);
    num("keyframeRequests", s.keyframe_requests);
    Napi::Object d = Napi::Object::New(env);
    d.Set("busy", Napi::Number::New(env, static_cast<double>(s.dropped_busy)));
    d.Set("rate", Napi::Number::New(env, static_cast<double>(s.dropped_rate)));
    d.Set("queueFull", Napi::Number::New(env, static_cast<double>(s.dropped_queue_full)));
    d.Set("unchanged", Napi::Number::New(env, static_cast<double>(s.dropped_unchanged)));
    d.Set("failed", Napi::Number::New(env, static_cast<double>(s.dropped_failed)));
    d.Set("dmabuf", Napi::Number::New(env, static_cast<double>(s.dropped_dmabuf)));
    o.Set("dropped", d);
    num("bytesOut", s.bytes_out);
    num("fallbacks", s.fallbacks);
    num("reinits", s.reinits);
    num("bitrateChanges", s.bitrate_changes);
    o.Set("backend", s.backend);
    num("bitrateBps", s.bitrate_bps);
    num("fps", s.fps);
    num("width", s.width);
    num("height", s.height);
    o.Set("profileLevelId", s.profile_level_id);
    o.Set("wait", HistogramToJs(env, s.wait));
    o.Set("convert", HistogramToJs(env, s.convert));
    o.Set("encode", HistogramToJs(env, s.encode));
    return o;
  }

  std::shared_ptr<Channel> channel_;
  std::unique_ptr<Pipeline> pipeline_;
  Napi::Reference<Napi::Array> open_events_;
  bool closed_ = false;
};

Napi::Object ProbeToJs(Napi::Env env, const ProbeResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", r.name);
  o.Set("compiled", r.compiled);
  o.Set("available", r.available);
  o.Set("reason", r.reason);
  o.Set("device", r.device);
  Napi::Object c = Napi::Object::New(env);
  c.Set("bitrateWithoutIdr", r.caps.bitrate_without_idr);
  c.Set("framerateWithoutIdr", r.caps.framerate_without_idr);
  c.Set("roi", r.caps.roi);
  c.Set("intraRefresh", r.caps.intra_refresh);
  c.Set("zeroCopyDmabuf", r.caps.zero_copy_dmabuf);
  o.Set("caps", c);
  return o;
}

// probeEncoders(names?) -> [{ name, compiled, available, reason, caps }]. Synchronous: each probe
// opens a 256x144 encoder (a few ms); the CLI and open() call it rarely.
Napi::Value ProbeEncoders(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::string> names = BackendNames();
  if (info.Length() > 0 && info[0].IsArray()) {
    names.clear();
    Napi::Array a = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) names.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  }
  Napi::Array out = Napi::Array::New(env, names.size());
  for (size_t i = 0; i < names.size(); ++i) out.Set(static_cast<uint32_t>(i), ProbeToJs(env, Probe(names[i])));
  return out;
}

}  // namespace

void InitBinding(Napi::Env env, Napi::Object exports) {
  // libavcodec's and libx264's banners and per-encoder INFO lines would go to the agent's stderr;
  // failures come back as error strings instead. Process-wide, once.
  static std::once_flag log_once;
  std::call_once(log_once, [] { av_log_set_level(AV_LOG_ERROR); });
  exports.Set("NativeVideoEncoder", EncoderWrap::Define(env));
  exports.Set("FrameFeeder", FeederWrap::Define(env));
  exports.Set("probeEncoders", Napi::Function::New(env, ProbeEncoders, "probeEncoders"));
}

}  // namespace wl::encode
