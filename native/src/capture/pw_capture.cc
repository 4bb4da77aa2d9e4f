#include "capture/pw_capture.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <spa/buffer/meta.h>
#include <spa/param/buffers.h>
#include <spa/param/format-utils.h>
#include <spa/pod/builder.h>
#include <spa/utils/result.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "damage/tiles.h"

namespace wl::capture {
namespace {

// 32-bit RGB layouts we can hand to the encoder's colour conversion. The first is the default: sway
// (wlroots XRGB8888) and mutter both produce BGRx.
constexpr uint32_t kFormats[] = {
    SPA_VIDEO_FORMAT_BGRx, SPA_VIDEO_FORMAT_RGBx, SPA_VIDEO_FORMAT_BGRA, SPA_VIDEO_FORMAT_RGBA,
    SPA_VIDEO_FORMAT_xRGB, SPA_VIDEO_FORMAT_xBGR, SPA_VIDEO_FORMAT_ARGB, SPA_VIDEO_FORMAT_ABGR,
};

const char* FormatName(uint32_t f) {
  switch (f) {
    case SPA_VIDEO_FORMAT_BGRx: return "BGRx";
    case SPA_VIDEO_FORMAT_RGBx: return "RGBx";
    case SPA_VIDEO_FORMAT_BGRA: return "BGRA";
    case SPA_VIDEO_FORMAT_RGBA: return "RGBA";
    case SPA_VIDEO_FORMAT_xRGB: return "xRGB";
    case SPA_VIDEO_FORMAT_xBGR: return "xBGR";
    case SPA_VIDEO_FORMAT_ARGB: return "ARGB";
    case SPA_VIDEO_FORMAT_ABGR: return "ABGR";
    default: return "unknown";
  }
}

const char* DataTypeName(uint32_t t) {
  switch (t) {
    case SPA_DATA_MemFd: return "memfd";
    case SPA_DATA_MemPtr: return "memptr";
    case SPA_DATA_DmaBuf: return "dmabuf";
    default: return "unknown";
  }
}

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

constexpr uint32_t kMaxDamageRegions = 16;  // what we ask the producer for (xdpw sends up to 4)
constexpr size_t kPoolSize = 4;             // newest/reference + one filling + two per encoder (pending, last)
constexpr uint32_t kCursorMax = 256;

constexpr size_t CursorMetaSize(uint32_t w, uint32_t h) {
  return sizeof(struct spa_meta_cursor) + sizeof(struct spa_meta_bitmap) + static_cast<size_t>(w) * h * 4;
}

void CopyRows(uint8_t* dst, size_t dst_stride, const uint8_t* src, size_t src_stride, size_t row_bytes, uint32_t rows) {
  if (dst_stride == src_stride && dst_stride == row_bytes) {
    std::memcpy(dst, src, row_bytes * rows);
    return;
  }
  for (uint32_t y = 0; y < rows; ++y) std::memcpy(dst + y * dst_stride, src + y * src_stride, row_bytes);
}

}  // namespace

// Our own read-only mapping of one memfd buffer, made at add_buffer. PipeWire unmaps its own mapping at
// remove_buffer; this one lives as long as a frame (through its BufferHold) or the slot needs it.
struct ShmMapping {
  void* addr = MAP_FAILED;
  size_t length = 0;
  const uint8_t* data = nullptr;  // what PipeWire's spa_data::data points at (mapoffset into the fd)
  uint32_t maxsize = 0;
  ShmMapping() = default;
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;
  ~ShmMapping() {
    if (addr != MAP_FAILED) munmap(addr, length);
  }
};

// One buffer of the stream, from add_buffer to remove_buffer (pw_buffer::user_data). `pw` and `held`
// are loop-thread only; a hold keeps the slot object alive past remove_buffer, `pw` is null then.
struct BufferSlot : std::enable_shared_from_this<BufferSlot> {
  struct pw_buffer* pw = nullptr;
  std::shared_ptr<const ShmMapping> map;  // null: cannot be held (MemPtr, DMA-BUF, mmap failed)
  bool held = false;
  uint64_t held_delivery = 0;  // the delivery the current hold is for (a reused buffer may be held anew)
  // Bumped (loop thread) each time PipeWire hands us this buffer; frames read it from any thread.
  std::shared_ptr<std::atomic<uint64_t>> deliveries = std::make_shared<std::atomic<uint64_t>>(0);
};

// Buffers whose last frame was released, on their way back to the loop thread. Release() may run on
// any thread (an encoder dropping its last frame, a mailbox replacing a frame on the loop thread, JS);
// it wakes the loop with an eventfd source. Detach() (Close) makes it a no-op for good.
class BufferReleaser {
 public:
  BufferReleaser(struct pw_loop* loop, struct spa_source* event) : loop_(loop), event_(event) {}
  struct Released {
    std::shared_ptr<BufferSlot> slot;
    uint64_t delivery;
  };
  void Release(std::shared_ptr<BufferSlot> slot, uint64_t delivery) {
    std::lock_guard<std::mutex> lock(mu_);
    if (loop_ == nullptr) return;  // the capture closed: there is no producer to give it back to
    released_.push_back(Released{std::move(slot), delivery});
    pw_loop_signal_event(loop_, event_);
  }
  std::vector<Released> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(released_, {});
  }
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    loop_ = nullptr;
    event_ = nullptr;
    released_.clear();
  }

 private:
  std::mutex mu_;
  struct pw_loop* loop_;
  struct spa_source* event_;
  std::vector<Released> released_;
};

namespace {
// What Frame::hold points at: the buffer stays dequeued (and its memory mapped) while this lives.
struct BufferHold {
  std::shared_ptr<BufferSlot> slot;
  std::shared_ptr<const ShmMapping> map;
  std::shared_ptr<BufferReleaser> releaser;
  uint64_t delivery = 0;
  ~BufferHold() { releaser->Release(std::move(slot), delivery); }
};
}  // namespace

const char* StreamStateName(StreamState s) {
  switch (s) {
    case StreamState::kConnecting: return "connecting";
    case StreamState::kPaused: return "paused";
    case StreamState::kStreaming: return "streaming";
    case StreamState::kError: return "error";
    case StreamState::kClosed: return "closed";
  }
  return "error";
}

void Timing::Add(double us) {
  if (count == 0 || us < min_us) min_us = us;
  if (count == 0 || us > max_us) max_us = us;
  ++count;
  sum_us += us;
  size_t i = 0;
  while (i < kBucketsUs.size() && us >= kBucketsUs[i]) ++i;
  ++buckets[i];
}

PipeWireCapture::PipeWireCapture(const CaptureOptions& options, EventSink* sink) : options_(options), sink_(sink) {
  // DMA-BUF only when TS asked for it (a VA-API encoder comes first and a render node exists) and
  // the node really has a VA-API video processor; otherwise shared memory, and the reason is kept.
  if (options_.dmabuf_device.empty()) {
    offer_.reason = options_.dmabuf_off_reason.empty() ? "not requested (shared-memory capture)" : options_.dmabuf_off_reason;
  } else {
    offer_ = ProbeDmabufImport(options_.dmabuf_device, std::vector<uint32_t>(std::begin(kFormats), std::end(kFormats)));
  }
  info_.dmabuf_offered = offer_.enabled;
  info_.dmabuf_reason = offer_.reason;
}

uint32_t PipeWireCapture::BuildFormats(struct spa_pod_builder* b, const struct spa_pod** params, uint32_t max) {
  return BuildEnumFormats(b, offer_, kFormats, sizeof(kFormats) / sizeof(kFormats[0]), params, max);
}

void PipeWireCapture::RequestSharedMemory(const std::string& reason) {
  if (closed_.load() || loop_ == nullptr) return;
  pw_thread_loop_lock(loop_);
  if (offer_.enabled && stream_ != nullptr) {
    offer_.enabled = false;
    offer_.reason = "renegotiated to shared memory: " + reason;
    {
      std::lock_guard<std::mutex> lock(info_mu_);
      info_.dmabuf_offered = false;
      info_.dmabuf_reason = offer_.reason;
    }
    // A new EnumFormat list (shared memory only) makes PipeWire renegotiate the link.
    uint8_t buffer[4096];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
    const struct spa_pod* params[16];
    const uint32_t n = BuildFormats(&b, params, 16);
    pw_stream_update_params(stream_, params, n);
  }
  pw_thread_loop_unlock(loop_);
}

PipeWireCapture::~PipeWireCapture() { Close(); }

std::unique_ptr<PipeWireCapture> PipeWireCapture::Create(const CaptureOptions& options, EventSink* sink,
                                                         std::string* error) {
  std::unique_ptr<PipeWireCapture> c(new PipeWireCapture(options, sink));
  if (!c->Start(error)) {
    c->Close();
    return nullptr;
  }
  return c;
}

bool PipeWireCapture::Start(std::string* error) {
  loop_ = pw_thread_loop_new("wl-capture", nullptr);
  if (loop_ == nullptr) {
    *error = std::string("pw_thread_loop_new failed: ") + std::strerror(errno);
    return false;
  }
  context_ = pw_context_new(pw_thread_loop_get_loop(loop_), nullptr, 0);
  if (context_ == nullptr) {
    *error = std::string("pw_context_new failed: ") + std::strerror(errno);
    return false;
  }
  // Released held buffers come back through this eventfd source (added before the loop runs).
  release_event_ = pw_loop_add_event(pw_thread_loop_get_loop(loop_), &PipeWireCapture::OnBuffersReleased, this);
  if (release_event_ == nullptr) {
    *error = std::string("pw_loop_add_event failed: ") + std::strerror(errno);
    return false;
  }
  releaser_ = std::make_shared<BufferReleaser>(pw_thread_loop_get_loop(loop_), release_event_);
  if (pw_thread_loop_start(loop_) < 0) {
    *error = "pw_thread_loop_start failed";
    return false;
  }
  pw_thread_loop_lock(loop_);
  if (options_.fd >= 0) {
    // Our own CLOEXEC copy (>= 5, clear of stdio): PipeWire takes ownership of it and closes it on
    // disconnect; the caller keeps and closes the portal's original.
    const int fd = fcntl(options_.fd, F_DUPFD_CLOEXEC, 5);
    if (fd < 0) {
      *error = std::string("cannot duplicate the PipeWire fd: ") + std::strerror(errno);
      pw_thread_loop_unlock(loop_);
      return false;
    }
    core_ = pw_context_connect_fd(context_, fd, nullptr, 0);
  } else {
    core_ = pw_context_connect(context_, nullptr, 0);
  }
  if (core_ == nullptr) {
    *error = std::string("cannot connect to PipeWire: ") + std::strerror(errno) +
             (options_.fd >= 0 ? "" : " (is the pipewire daemon running in this XDG_RUNTIME_DIR?)");
    pw_thread_loop_unlock(loop_);
    return false;
  }
  static struct pw_core_events core_events = [] {
    struct pw_core_events e {};
    e.version = PW_VERSION_CORE_EVENTS;
    e.error = &PipeWireCapture::OnCoreError;
    return e;
  }();
  pw_core_add_listener(core_, &core_listener_, &core_events, this);

  // Without these three WirePlumber destroys the consumer (notes, trap 3).
  struct pw_properties* props = pw_properties_new(PW_KEY_MEDIA_TYPE, "Video", PW_KEY_MEDIA_CATEGORY, "Capture",
                                                  PW_KEY_MEDIA_ROLE, "Screen", nullptr);
  stream_ = pw_stream_new(core_, options_.name.c_str(), props);
  if (stream_ == nullptr) {
    *error = std::string("pw_stream_new failed: ") + std::strerror(errno);
    pw_thread_loop_unlock(loop_);
    return false;
  }
  static struct pw_stream_events stream_events = [] {
    struct pw_stream_events e {};
    e.version = PW_VERSION_STREAM_EVENTS;
    e.state_changed = &PipeWireCapture::OnStreamStateChanged;
    e.param_changed = &PipeWireCapture::OnStreamParamChanged;
    e.process = &PipeWireCapture::OnStreamProcess;
    e.add_buffer = &PipeWireCapture::OnStreamAddBuffer;
    e.remove_buffer = &PipeWireCapture::OnStreamRemoveBuffer;
    return e;
  }();
  pw_stream_add_listener(stream_, &stream_listener_, &stream_events, this);

  // EnumFormat: with DMA-BUF, one per importable layout with its modifiers first (capture/dmabuf.h);
  // always the shared-memory one (every 32-bit RGB layout, any size, any rate) as the fallback.
  uint8_t buffer[4096];
  struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
  const struct spa_pod* params[16];
  const uint32_t n_params = BuildFormats(&b, params, 16);

  // DONT_RECONNECT: when the portal's node goes away the session manager must not relink us to some
  // other video source (that would show the user something they never shared); WirePlumber then
  // destroys our node instead and the stream reports the loss.
  const int res = pw_stream_connect(
      stream_, PW_DIRECTION_INPUT, options_.node_id,
      static_cast<enum pw_stream_flags>(PW_STREAM_FLAG_AUTOCONNECT | PW_STREAM_FLAG_MAP_BUFFERS | PW_STREAM_FLAG_DONT_RECONNECT),
      params, n_params);
  pw_thread_loop_unlock(loop_);
  if (res < 0) {
    *error = std::string("pw_stream_connect failed: ") + spa_strerror(res);
    return false;
  }
  return true;
}

void PipeWireCapture::Close() {
  if (closed_.exchange(true)) return;
  fanout_.Close();  // wakes every encoder blocked in its mailbox; they see the source closed
  // From here a frame released anywhere only drops its hold (and our mapping with the last one): the
  // stream and the loop are about to go, nothing is requeued.
  if (releaser_ != nullptr) releaser_->Detach();
  if (loop_ != nullptr) {
    pw_thread_loop_lock(loop_);
    if (stream_ != nullptr) {
      spa_hook_remove(&stream_listener_);
      pw_stream_disconnect(stream_);
      pw_stream_destroy(stream_);
      stream_ = nullptr;
    }
    if (release_event_ != nullptr) {
      pw_loop_destroy_source(pw_thread_loop_get_loop(loop_), release_event_);
      release_event_ = nullptr;
    }
    pw_thread_loop_unlock(loop_);
    // Joins the loop thread: no callback runs after this line.
    pw_thread_loop_stop(loop_);
    if (core_ != nullptr) {
      spa_hook_remove(&core_listener_);
      pw_core_disconnect(core_);  // closes the socket (our dup of the portal fd)
      core_ = nullptr;
    }
    if (context_ != nullptr) {
      pw_context_destroy(context_);
      context_ = nullptr;
    }
    pw_thread_loop_destroy(loop_);
    loop_ = nullptr;
  }
  pool_.clear();
  last_published_.reset();
  // Frames still held elsewhere keep their slot and mapping through their hold; the rest go now.
  for (auto& slot : slots_) slot->pw = nullptr;
  slots_.clear();
  held_ = 0;
  std::lock_guard<std::mutex> lock(info_mu_);
  info_.state = StreamState::kClosed;
  info_.counters.buffers_held = 0;
}

Snapshot PipeWireCapture::GetSnapshot() const {
  std::lock_guard<std::mutex> lock(info_mu_);
  return info_;
}

LatestFrame PipeWireCapture::WaitLatest(std::chrono::nanoseconds timeout) {
  return default_consumer_.Get(fanout_)->Wait(timeout, closed_);
}

LatestFrame PipeWireCapture::TryTakeLatest() { return default_consumer_.Get(fanout_)->TryTake(); }

FramePtr PipeWireCapture::PeekLatest() const { return fanout_.Peek(); }

void PipeWireCapture::SetState(StreamState state, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    if (info_.state == state && info_.message == message) return;
    info_.state = state;
    info_.message = message;
  }
  if (!closed_.load()) sink_->OnStateChanged(state, message);
}

void PipeWireCapture::OnCoreError(void* data, uint32_t id, int /*seq*/, int res, const char* message) {
  auto* self = static_cast<PipeWireCapture*>(data);
  // Errors on other objects are reported through the stream; a core error means the connection is gone.
  if (id != PW_ID_CORE) return;
  std::string msg = std::string("PipeWire core error: ") + (message ? message : "") + " (" + spa_strerror(res) + ")";
  if (res == -EPIPE) msg = "PipeWire connection lost (the daemon or the portal session went away)";
  self->SetState(StreamState::kError, msg);
}

void PipeWireCapture::OnStreamStateChanged(void* data, enum pw_stream_state /*old*/, enum pw_stream_state state,
                                           const char* error) {
  auto* self = static_cast<PipeWireCapture*>(data);
  switch (state) {
    case PW_STREAM_STATE_ERROR:
      self->SetState(StreamState::kError, std::string("stream error: ") + (error ? error : "unknown"));
      break;
    case PW_STREAM_STATE_UNCONNECTED: {
      // After having been connected this means the node went away (producer stopped, session closed).
      const StreamState cur = self->GetSnapshot().state;
      if (cur != StreamState::kConnecting && cur != StreamState::kError)
        self->SetState(StreamState::kError, "stream disconnected (the producer node went away)");
      break;
    }
    case PW_STREAM_STATE_CONNECTING: self->SetState(StreamState::kConnecting, ""); break;
    case PW_STREAM_STATE_PAUSED: self->SetState(StreamState::kPaused, ""); break;
    case PW_STREAM_STATE_STREAMING: self->SetState(StreamState::kStreaming, ""); break;
  }
}

void PipeWireCapture::OnStreamParamChanged(void* data, uint32_t id, const struct spa_pod* param) {
  auto* self = static_cast<PipeWireCapture*>(data);
  if (id == SPA_PARAM_Format && param != nullptr) self->HandleFormat(param);
}

void PipeWireCapture::HandleFormat(const struct spa_pod* param) {
  uint32_t media_type = 0, media_subtype = 0;
  if (spa_format_parse(param, &media_type, &media_subtype) < 0 || media_type != SPA_MEDIA_TYPE_video ||
      media_subtype != SPA_MEDIA_SUBTYPE_raw)
    return;
  struct spa_video_info_raw raw {};
  if (spa_format_video_raw_parse(param, &raw) < 0) {
    pw_stream_set_error(stream_, -EINVAL, "cannot parse the video format");
    return;
  }
  raw_ = raw;
  have_format_ = true;
  // DMA-BUF when the producer fixated a modifier (PipeWire's protocol: the consumer only parses).
  uint64_t modifier = 0;
  bool needs_fixation = false;
  dmabuf_negotiated_ = FormatSelectsDmabuf(param, &modifier, &needs_fixation);
  if (dmabuf_negotiated_ && needs_fixation) {
    // Fixation is the allocating producer's job; a Format that still asks for it is not final.
    // The producer sends the fixated Format next (param_changed again).
    return;
  }
  // Renegotiation (e.g. the output was resized): old frames no longer match, start from a full frame.
  pool_.clear();
  last_published_.reset();
  carry_damage_.clear();
  carry_unknown_ = false;

  // DMA-BUF buffers for a format with a modifier, shared memory otherwise.
  uint8_t buffer[1024];
  struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
  const struct spa_pod* params[5];
  uint32_t n = 0;
  params[n++] = BuildBuffersParam(&b, dmabuf_negotiated_, raw.size.width, raw.size.height);
  params[n++] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamMeta, SPA_PARAM_Meta, SPA_PARAM_META_type, SPA_POD_Id(SPA_META_Header), SPA_PARAM_META_size,
      SPA_POD_Int(sizeof(struct spa_meta_header))));
  params[n++] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamMeta, SPA_PARAM_Meta, SPA_PARAM_META_type, SPA_POD_Id(SPA_META_VideoDamage), SPA_PARAM_META_size,
      SPA_POD_CHOICE_RANGE_Int(sizeof(struct spa_meta_region) * kMaxDamageRegions, sizeof(struct spa_meta_region) * 1,
                               sizeof(struct spa_meta_region) * kMaxDamageRegions)));
  params[n++] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamMeta, SPA_PARAM_Meta, SPA_PARAM_META_type, SPA_POD_Id(SPA_META_VideoCrop), SPA_PARAM_META_size,
      SPA_POD_Int(sizeof(struct spa_meta_region))));
  params[n++] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamMeta, SPA_PARAM_Meta, SPA_PARAM_META_type, SPA_POD_Id(SPA_META_Cursor), SPA_PARAM_META_size,
      SPA_POD_CHOICE_RANGE_Int(CursorMetaSize(64, 64), CursorMetaSize(1, 1), CursorMetaSize(kCursorMax, kCursorMax))));
  pw_stream_update_params(stream_, params, n);

  NegotiatedFormat fmt;
  fmt.valid = true;
  fmt.width = raw.size.width;
  fmt.height = raw.size.height;
  fmt.spa_format = raw.format;
  fmt.format_name = FormatName(raw.format);
  fmt.dmabuf = dmabuf_negotiated_;
  fmt.modifier = dmabuf_negotiated_ ? modifier : 0;
  fmt.buffers = n_buffers_;  // buffers of a renegotiation come after this; add_buffer updates it
  fmt.framerate_num = raw.framerate.num;
  fmt.framerate_den = raw.framerate.denom;
  fmt.max_framerate_num = raw.max_framerate.num;
  fmt.max_framerate_den = raw.max_framerate.denom;
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++info_.counters.renegotiations;
    info_.format = fmt;
  }
  if (!closed_.load()) sink_->OnFormatChanged(fmt);
}

// The negotiated buffer count (format.buffers): what the producer really gave, whatever we asked.
// A memfd buffer also gets our own read-only mapping, which frames that hold the buffer read.
void PipeWireCapture::OnStreamAddBuffer(void* data, struct pw_buffer* b) {
  auto* self = static_cast<PipeWireCapture*>(data);
  auto slot = std::make_shared<BufferSlot>();
  slot->pw = b;
  struct spa_buffer* buf = b->buffer;
  if (self->options_.hold_buffers && buf->n_datas >= 1 && buf->datas[0].type == SPA_DATA_MemFd && buf->datas[0].fd >= 0 &&
      buf->datas[0].maxsize > 0) {  // (xdpw's buffers arrive with flags 0: the mmap says whether we can read)
    const struct spa_data& d = buf->datas[0];
    const long page = sysconf(_SC_PAGESIZE);
    const uint64_t aligned = d.mapoffset - d.mapoffset % static_cast<uint64_t>(page > 0 ? page : 4096);
    auto map = std::make_shared<ShmMapping>();
    map->length = static_cast<size_t>(d.mapoffset - aligned) + d.maxsize;
    map->addr = mmap(nullptr, map->length, PROT_READ, MAP_SHARED, static_cast<int>(d.fd), static_cast<off_t>(aligned));
    if (map->addr != MAP_FAILED) {
      map->data = static_cast<const uint8_t*>(map->addr) + (d.mapoffset - aligned);
      map->maxsize = d.maxsize;
      slot->map = std::move(map);
    }  // else: this buffer is copied, like a MemPtr one
  }
  b->user_data = slot.get();
  self->slots_.push_back(std::move(slot));
  std::lock_guard<std::mutex> lock(self->info_mu_);
  self->info_.format.buffers = ++self->n_buffers_;
}

// A held buffer may be removed (renegotiation, pause to reconnect, stream teardown): its frame keeps
// reading our mapping, and the slot is never requeued.
void PipeWireCapture::OnStreamRemoveBuffer(void* data, struct pw_buffer* b) {
  auto* self = static_cast<PipeWireCapture*>(data);
  auto* slot = static_cast<BufferSlot*>(b->user_data);
  b->user_data = nullptr;
  if (slot != nullptr) {
    if (slot->held) {
      slot->held = false;
      self->SetHeld(-1);
      std::lock_guard<std::mutex> lock(self->info_mu_);
      ++self->info_.counters.buffers_removed_held;
    }
    slot->pw = nullptr;
    slot->map.reset();
    auto& v = self->slots_;
    v.erase(std::remove_if(v.begin(), v.end(), [slot](const std::shared_ptr<BufferSlot>& s) { return s.get() == slot; }), v.end());
  }
  std::lock_guard<std::mutex> lock(self->info_mu_);
  if (self->n_buffers_ > 0) --self->n_buffers_;
  self->info_.format.buffers = self->n_buffers_;
}

void PipeWireCapture::OnBuffersReleased(void* data, uint64_t /*count*/) { static_cast<PipeWireCapture*>(data)->RequeueReleased(); }

void PipeWireCapture::RequeueReleased() {
  if (releaser_ == nullptr) return;
  for (const BufferReleaser::Released& r : releaser_->Take()) {
    BufferSlot* slot = r.slot.get();
    // Removed meanwhile (remove_buffer already counted it), or PipeWire gave the buffer out again
    // (then it is not ours to queue, or it is held anew by a newer frame).
    if (!slot->held || slot->held_delivery != r.delivery) continue;
    slot->held = false;
    SetHeld(-1);
    if (slot->pw != nullptr && stream_ != nullptr) pw_stream_queue_buffer(stream_, slot->pw);
  }
}

void PipeWireCapture::SetHeld(int delta) {
  held_ = static_cast<uint32_t>(static_cast<int>(held_) + delta);
  std::lock_guard<std::mutex> lock(info_mu_);
  info_.counters.buffers_held = held_;
  info_.counters.buffers_held_max = std::max<uint64_t>(info_.counters.buffers_held_max, held_);
}

bool PipeWireCapture::CanHold(struct pw_buffer* b, const struct spa_data* d) {
  auto* slot = static_cast<BufferSlot*>(b->user_data);
  if (!options_.hold_buffers || slot == nullptr || slot->map == nullptr || slot->held || d->type != SPA_DATA_MemFd) return false;
  // Holding this one too must leave the producer kProducerMinFree buffers to render into.
  if (n_buffers_ < held_ + 1 + kProducerMinFree) {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++info_.counters.frames_copied_short;
    return false;
  }
  return true;
}

void PipeWireCapture::OnStreamProcess(void* data) {
  auto* self = static_cast<PipeWireCapture*>(data);
  const uint64_t t0 = NowNs();
  // Buffers released since the last wake-up go back first: they count as the producer's again.
  self->RequeueReleased();
  // Newest buffer wins: requeue everything older at once so the producer never runs out of buffers.
  struct pw_buffer* newest = nullptr;
  uint64_t skipped = 0;
  while (struct pw_buffer* b = pw_stream_dequeue_buffer(self->stream_)) {
    if (auto* slot = static_cast<BufferSlot*>(b->user_data); slot != nullptr) {
      slot->deliveries->fetch_add(1, std::memory_order_acq_rel);
      if (slot->held) {
        // The producer reused a buffer a frame still holds (PipeWire 0.3.65 between processes, see
        // pw_capture.h): that frame is no longer intact(), and the buffer is no longer held by it
        // (its release must not queue it: it is ours now as a new delivery).
        slot->held = false;
        self->SetHeld(-1);
        std::lock_guard<std::mutex> lock(self->info_mu_);
        ++self->info_.counters.buffers_redelivered_held;
      }
    }
    if (newest != nullptr) {
      // Its compositor damage still counts: the newest buffer's damage is relative to this one.
      struct spa_meta* m = spa_buffer_find_meta(newest->buffer, SPA_META_VideoDamage);
      bool any = false;
      if (m != nullptr) {
        struct spa_meta_region* r;
        spa_meta_for_each(r, m) {
          if (!spa_meta_region_is_valid(r)) break;
          self->carry_damage_.push_back(damage::Rect{static_cast<uint32_t>(std::max(0, r->region.position.x)),
                                                     static_cast<uint32_t>(std::max(0, r->region.position.y)),
                                                     r->region.size.width, r->region.size.height});
          any = true;
        }
      }
      if (!any) self->carry_unknown_ = true;
      self->ReadCursor(newest->buffer);
      pw_stream_queue_buffer(self->stream_, newest);
      ++skipped;
    }
    newest = b;
  }
  if (skipped != 0) {
    std::lock_guard<std::mutex> lock(self->info_mu_);
    self->info_.counters.buffers_skipped += skipped;
  }
  if (newest == nullptr) return;
  if (!self->ProcessBuffer(newest, t0, &self->carry_damage_, &self->carry_unknown_)) pw_stream_queue_buffer(self->stream_, newest);
}

void PipeWireCapture::ReadCursor(struct spa_buffer* buf) {
  struct spa_meta* meta = spa_buffer_find_meta(buf, SPA_META_Cursor);
  if (meta == nullptr || meta->size < sizeof(struct spa_meta_cursor)) return;
  auto* mc = static_cast<struct spa_meta_cursor*>(meta->data);
  if (!spa_meta_cursor_is_valid(mc)) return;
  CursorInfo changed;
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    CursorInfo& c = info_.cursor;
    const uint64_t serial_before = c.shape_serial;
    const bool moved = !c.present || c.x != mc->position.x || c.y != mc->position.y || c.id != mc->id;
    ReadCursorLocked(mc, meta->size, &c);
    if (moved || c.shape_serial != serial_before) {
      changed = c;
      changed.shape_rgba.clear();  // the sink only needs to know; JS fetches the bitmap on demand
    }
  }
  if (changed.present && !closed_.load()) sink_->OnCursorChanged(changed);
}

void PipeWireCapture::ReadCursorLocked(const struct spa_meta_cursor* mc, uint32_t meta_size, CursorInfo* out) {
  CursorInfo& c = *out;
  c.present = true;
  c.id = mc->id;
  c.x = mc->position.x;
  c.y = mc->position.y;
  c.hotspot_x = mc->hotspot.x;
  c.hotspot_y = mc->hotspot.y;
  if (mc->bitmap_offset == 0 || mc->bitmap_offset + sizeof(struct spa_meta_bitmap) > meta_size) return;
  auto* bm = SPA_PTROFF(mc, mc->bitmap_offset, const struct spa_meta_bitmap);
  const uint32_t w = bm->size.width, h = bm->size.height;
  if (w == 0 || h == 0) {
    // An empty bitmap is how a producer hides the pointer (mutter's empty sprite): a new, empty shape.
    if (c.shape_width != 0 || c.shape_height != 0 || c.shape_serial == 0) {
      c.shape_width = 0;
      c.shape_height = 0;
      c.shape_rgba.clear();
      ++c.shape_serial;
    }
    return;
  }
  const uint32_t stride = bm->stride > 0 ? static_cast<uint32_t>(bm->stride) : w * 4;
  if (w > kCursorMax || h > kCursorMax || stride < w * 4) return;
  if (bm->offset + static_cast<uint64_t>(stride) * (h - 1) + w * 4 + mc->bitmap_offset > meta_size) return;
  const auto* src = SPA_PTROFF(bm, bm->offset, const uint8_t);
  c.shape_width = w;
  c.shape_height = h;
  c.shape_rgba.resize(static_cast<size_t>(w) * h * 4);
  // Normalised to RGBA so JS does not need to know SPA formats; alpha-less layouts get 0xff.
  for (uint32_t y = 0; y < h; ++y) {
    const uint8_t* s = src + static_cast<size_t>(y) * stride;
    uint8_t* d = c.shape_rgba.data() + static_cast<size_t>(y) * w * 4;
    for (uint32_t x = 0; x < w; ++x, s += 4, d += 4) {
      switch (bm->format) {
        case SPA_VIDEO_FORMAT_BGRA: case SPA_VIDEO_FORMAT_BGRx: d[0] = s[2]; d[1] = s[1]; d[2] = s[0]; d[3] = s[3]; break;
        case SPA_VIDEO_FORMAT_ARGB: case SPA_VIDEO_FORMAT_xRGB: d[0] = s[1]; d[1] = s[2]; d[2] = s[3]; d[3] = s[0]; break;
        case SPA_VIDEO_FORMAT_ABGR: case SPA_VIDEO_FORMAT_xBGR: d[0] = s[3]; d[1] = s[2]; d[2] = s[1]; d[3] = s[0]; break;
        default: std::memcpy(d, s, 4); break;  // RGBA / RGBx
      }
      if (bm->format == SPA_VIDEO_FORMAT_BGRx || bm->format == SPA_VIDEO_FORMAT_RGBx ||
          bm->format == SPA_VIDEO_FORMAT_xRGB || bm->format == SPA_VIDEO_FORMAT_xBGR)
        d[3] = 0xff;
    }
  }
  ++c.shape_serial;
}

std::shared_ptr<Frame> PipeWireCapture::AcquirePoolFrame() {
  for (auto& f : pool_)
    if (f.use_count() == 1) return f;  // nobody else holds it: safe to overwrite
  // Each consumer (encoder rung) may hold two frames besides the shared newest one (its pending frame
  // and the one it refreshes from).
  const size_t limit = std::max(kPoolSize, 2 + 2 * fanout_.Consumers());
  if (pool_.size() < limit) {
    pool_.push_back(std::make_shared<Frame>());
    return pool_.back();
  }
  return nullptr;
}

// What a shared-memory and a DMA-BUF frame take alike from the buffer's metas: size, format, pts, the
// capture time, the producer's crop, and the compositor's damage (clipped: trusted for *where*, but
// never for memory safety).
void PipeWireCapture::FillFromMetas(Frame* frame, struct spa_buffer* buf, struct spa_meta_header* header, uint64_t t0,
                                    uint32_t width, uint32_t height, std::vector<damage::Rect>* compositor) const {
  frame->width = width;
  frame->height = height;
  frame->spa_format = raw_.format;
  frame->format_name = FormatName(raw_.format);
  frame->pts_ns = header != nullptr ? header->pts : -1;
  frame->process_ns = t0;
  frame->has_crop = false;
  if (auto* crop = static_cast<struct spa_meta_region*>(spa_buffer_find_meta_data(buf, SPA_META_VideoCrop, sizeof(struct spa_meta_region)));
      crop != nullptr && spa_meta_region_is_valid(crop)) {
    damage::Rect r{static_cast<uint32_t>(std::max(0, crop->region.position.x)),
                   static_cast<uint32_t>(std::max(0, crop->region.position.y)), crop->region.size.width, crop->region.size.height};
    frame->has_crop = damage::Clip(&r, width, height);
    frame->crop = r;
  }
  compositor->clear();
  if (struct spa_meta* m = spa_buffer_find_meta(buf, SPA_META_VideoDamage); m != nullptr) {
    struct spa_meta_region* r;
    spa_meta_for_each(r, m) {
      if (!spa_meta_region_is_valid(r)) break;
      damage::Rect rect{static_cast<uint32_t>(std::max(0, r->region.position.x)),
                        static_cast<uint32_t>(std::max(0, r->region.position.y)), r->region.size.width, r->region.size.height};
      if (damage::Clip(&rect, width, height)) compositor->push_back(rect);
    }
  }
}

bool PipeWireCapture::ProcessBuffer(struct pw_buffer* b, uint64_t t0, std::vector<damage::Rect>* carried,
                                    bool* carried_unknown) {
  struct spa_buffer* buf = b->buffer;
  ReadCursor(buf);
  auto count = [this](uint64_t Counters::*field) {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++(info_.counters.*field);
    return false;
  };
  if (!have_format_ || buf->n_datas < 1) return count(&Counters::frames_empty);
  auto* header = static_cast<struct spa_meta_header*>(spa_buffer_find_meta_data(buf, SPA_META_Header, sizeof(struct spa_meta_header)));
  struct spa_data* d = &buf->datas[0];
  if ((header != nullptr && (header->flags & SPA_META_HEADER_FLAG_CORRUPTED)) ||
      (d->chunk != nullptr && (d->chunk->flags & SPA_CHUNK_FLAG_CORRUPTED))) {
    *carried_unknown = true;  // whatever changed in it is not in our reference frame
    return count(&Counters::frames_corrupted);
  }
  if (d->type == SPA_DATA_DmaBuf) {
    ProcessDmabuf(buf, header, t0, carried, carried_unknown);
    return false;
  }
  if (d->data == nullptr || d->chunk == nullptr || d->chunk->size == 0) return count(&Counters::frames_empty);

  const uint32_t width = raw_.size.width, height = raw_.size.height;
  const uint32_t row_bytes = width * 4;
  const uint32_t stride = d->chunk->stride > 0 ? static_cast<uint32_t>(d->chunk->stride) : row_bytes;
  const uint32_t offset = d->chunk->offset % std::max<uint32_t>(d->maxsize, 1);
  if (width == 0 || height == 0 || stride < row_bytes ||
      static_cast<uint64_t>(offset) + static_cast<uint64_t>(stride) * (height - 1) + row_bytes > d->maxsize) {
    *carried_unknown = true;
    return count(&Counters::frames_corrupted);
  }
  const size_t span = static_cast<size_t>(stride) * (height - 1) + row_bytes;  // bytes the frame reads

  NegotiatedFormat updated;
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++info_.counters.frames_received;
    if (info_.format.stride != stride || info_.format.buffer_type != DataTypeName(d->type)) {
      info_.format.stride = stride;
      info_.format.buffer_type = DataTypeName(d->type);
      updated = info_.format;
    }
  }
  // Stride and buffer type are only known from the first buffer (a static screen may send none for a
  // while), so the format is announced again once they are.
  if (updated.valid && !closed_.load()) sink_->OnFormatChanged(updated);

  // Which damage this frame gets: full (nothing to compare with), the compositor's, or our own tile
  // comparison with the previous frame.
  std::vector<damage::Rect> compositor;
  {
    Frame probe;
    FillFromMetas(&probe, buf, header, t0, width, height, &compositor);
  }
  // The reference may be a held buffer the producer has written into since (see pw_capture.h): it no
  // longer shows what was published, and only a full frame is safe.
  const bool reference_lost = last_published_ != nullptr && !last_published_->intact();
  if (reference_lost) {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++info_.counters.reference_lost;
  }
  enum class Mode { kFull, kCompositor, kTiles };
  const Mode mode = (last_published_ == nullptr || last_published_->width != width || last_published_->height != height ||
                     last_published_->dmabuf != nullptr || reference_lost)
                        ? Mode::kFull
                        : (!compositor.empty() && !*carried_unknown) ? Mode::kCompositor : Mode::kTiles;

  // Held: the frame reads the buffer through our own mapping (the same bytes as d->data), no copy.
  // Copied: into a pool frame, packed, and the buffer goes back at once. Tile comparison copies: its
  // frame becomes the next one's reference, kept for as long as the screen stays still, far longer
  // than PipeWire leaves a held buffer alone (and the copy is fused with the comparison's reads).
  auto* slot = static_cast<BufferSlot*>(b->user_data);
  const bool hold = mode != Mode::kTiles && CanHold(b, d) && slot->map->maxsize >= d->maxsize;
  std::shared_ptr<Frame> frame;
  const uint8_t* src;
  if (hold) {
    frame = std::make_shared<Frame>();
    src = slot->map->data + offset;
    frame->stride = stride;
    frame->mapped = src;
    frame->mapped_size = span;
  } else {
    src = static_cast<const uint8_t*>(d->data) + offset;
    frame = AcquirePoolFrame();
    if (frame == nullptr) {
      *carried_unknown = true;
      return count(&Counters::frames_no_slot);
    }
    frame->stride = row_bytes;
    frame->pixels.resize(static_cast<size_t>(row_bytes) * height);
  }
  uint8_t* const dst = hold ? nullptr : frame->pixels.data();
  FillFromMetas(frame.get(), buf, header, t0, width, height, &compositor);

  frame->damage.clear();
  if (mode == Mode::kFull) {
    if (dst != nullptr) CopyRows(dst, row_bytes, src, stride, row_bytes, height);
    frame->damage.push_back(damage::Rect{0, 0, width, height});
    frame->damage_source = DamageSource::kFull;
  } else if (mode == Mode::kCompositor) {
    if (dst != nullptr) CopyRows(dst, row_bytes, src, stride, row_bytes, height);
    for (damage::Rect r : *carried)
      if (damage::Clip(&r, width, height)) frame->damage.push_back(r);
    damage::Accumulate(&frame->damage, compositor, FrameMailbox::kMaxRects);
    frame->damage_source = DamageSource::kCompositor;
  } else {
    // No usable compositor damage: fused copy + tile compare against the previous frame.
    damage::TileDiffInput in;
    in.prev = last_published_->data();
    in.prev_stride = last_published_->stride;
    in.cur = src;
    in.cur_stride = stride;
    in.dst = dst;
    in.dst_stride = row_bytes;
    in.width = width;
    in.height = height;
    in.tile_size = options_.tile_size;
    damage::DiffTiles(in, &frame->damage);
    frame->damage_source = DamageSource::kTiles;
  }
  carried->clear();
  *carried_unknown = false;

  if (frame->damage.empty()) {
    // Nothing changed: a pool frame goes back to the pool untouched (nobody else holds it), a buffer
    // straight back to the producer, and the next stage is not woken.
    std::lock_guard<std::mutex> lock(info_mu_);
    ++info_.counters.frames_unchanged;
    return false;
  }
  if (hold) {
    slot->held = true;
    slot->held_delivery = slot->deliveries->load(std::memory_order_acquire);
    SetHeld(+1);
    auto h = std::make_shared<BufferHold>();
    h->slot = slot->shared_from_this();
    h->map = slot->map;
    h->releaser = releaser_;
    h->delivery = slot->held_delivery;
    frame->hold = std::move(h);
    frame->hold_deliveries = slot->deliveries;
    frame->hold_delivery = slot->held_delivery;
  }
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++(hold ? info_.counters.frames_held : info_.counters.frames_copied);
  }
  Publish(frame, t0);
  return hold;
}

// A DMA-BUF buffer: no CPU copy. Each plane's fd is dup'ed into the Frame (closed when the last
// holder releases it), with the chunk's offset and stride and the negotiated modifier; the pw_buffer
// goes back to the producer at once (frame.h says why that is safe enough and what is left out).
// Damage: the compositor's, when it sent some; tile comparison would need a CPU mapping of GPU
// memory (slow, and impossible for tiled modifiers), so without compositor damage it is the full frame.
void PipeWireCapture::ProcessDmabuf(struct spa_buffer* buf, struct spa_meta_header* header, uint64_t t0,
                                    std::vector<damage::Rect>* carried, bool* carried_unknown) {
  auto count = [this](uint64_t Counters::*field) {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++(info_.counters.*field);
  };
  const uint32_t width = raw_.size.width, height = raw_.size.height;
  auto planes = std::make_shared<DmabufPlanes>();
  planes->drm_format = DrmFourccOfSpa(raw_.format);
  planes->modifier = raw_.modifier;
  // n_datas is the plane count of the format/modifier pair (PipeWire >= 1.2 may append sync-timeline
  // fds after the planes; 0.3.65 does not).
  planes->n_planes = std::min<uint32_t>(buf->n_datas, DmabufPlanes::kMaxPlanes);
  for (uint32_t i = 0; i < planes->n_planes; ++i) {
    const struct spa_data& d = buf->datas[i];
    if (d.type != SPA_DATA_DmaBuf || d.fd < 0 || d.chunk == nullptr || d.chunk->stride <= 0) {
      *carried_unknown = true;
      return count(&Counters::frames_corrupted);
    }
    planes->fds[i] = fcntl(static_cast<int>(d.fd), F_DUPFD_CLOEXEC, 3);
    if (planes->fds[i] < 0) {
      *carried_unknown = true;
      return count(&Counters::frames_no_slot);  // out of fds: lost like a frame without a pool slot
    }
    planes->offsets[i] = d.chunk->offset;
    planes->strides[i] = static_cast<uint32_t>(d.chunk->stride);
  }
  if (width == 0 || height == 0 || planes->n_planes == 0 || planes->drm_format == 0) {
    *carried_unknown = true;
    return count(&Counters::frames_corrupted);
  }
  NegotiatedFormat updated;
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++info_.counters.frames_received;
    if (info_.format.stride != planes->strides[0] || info_.format.buffer_type != "dmabuf") {
      info_.format.stride = planes->strides[0];
      info_.format.buffer_type = "dmabuf";
      updated = info_.format;
    }
  }
  if (updated.valid && !closed_.load()) sink_->OnFormatChanged(updated);

  // Not from the pool (the pool recycles pixel memory; a DMA-BUF frame has none): one small object.
  auto frame = std::make_shared<Frame>();
  frame->stride = planes->strides[0];
  frame->dmabuf = std::move(planes);
  std::vector<damage::Rect> compositor;
  FillFromMetas(frame.get(), buf, header, t0, width, height, &compositor);
  const bool continues = last_published_ != nullptr && last_published_->width == width && last_published_->height == height &&
                         last_published_->dmabuf != nullptr;
  if (continues && !compositor.empty() && !*carried_unknown) {
    for (damage::Rect r : *carried)
      if (damage::Clip(&r, width, height)) frame->damage.push_back(r);
    damage::Accumulate(&frame->damage, compositor, FrameMailbox::kMaxRects);
    frame->damage_source = DamageSource::kCompositor;
  } else {
    frame->damage.push_back(damage::Rect{0, 0, width, height});
    frame->damage_source = DamageSource::kFull;
  }
  carried->clear();
  *carried_unknown = false;
  Publish(frame, t0);
}

void PipeWireCapture::Publish(const std::shared_ptr<Frame>& frame, uint64_t t0) {
  frame->seq = ++seq_;
  frame->publish_ns = NowNs();
  // Replaced before a consumer took it: when it takes this one it also redraws what that one changed.
  const bool dropped = fanout_.Publish(frame) > 0;
  last_published_ = frame;
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    ++info_.counters.frames_delivered;
    if (dropped) ++info_.counters.frames_dropped;
    info_.last_seq = frame->seq;
    info_.last_damage = frame->damage;
    info_.last_damage_ratio = damage::AreaRatio(frame->damage, frame->width, frame->height);
    info_.last_damage_source = frame->damage_source;
    info_.timing.Add(static_cast<double>(frame->publish_ns - t0) / 1000.0);
  }
  if (!closed_.load()) sink_->OnFrameAvailable(frame);
}

}  // namespace wl::capture
