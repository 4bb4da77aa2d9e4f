#include "encode/frame_feeder.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include <cstdio>
#include <cstring>

namespace wl::encode {
namespace {
uint64_t MonoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}
}  // namespace

FrameFeeder::~FrameFeeder() { Close(); }

void FrameFeeder::Publish(std::shared_ptr<capture::Frame> f) {
  f->seq = ++seq_;
  f->publish_ns = MonoNs();
  if (f->process_ns == 0) f->process_ns = f->publish_ns;
  fanout_.Publish(std::move(f));
}

void FrameFeeder::Push(const uint8_t* data, uint32_t width, uint32_t height, uint32_t stride, const std::string& format,
                       std::vector<damage::Rect> rects) {
  if (closed_.load()) return;
  auto f = std::make_shared<capture::Frame>();
  f->width = width;
  f->height = height;
  f->stride = width * 4;
  f->format_name = format;
  f->pixels.resize(static_cast<size_t>(f->stride) * height);
  for (uint32_t y = 0; y < height; ++y)
    std::memcpy(f->pixels.data() + static_cast<size_t>(y) * f->stride, data + static_cast<size_t>(y) * stride, f->stride);
  if (rects.empty()) {
    f->damage.assign(1, damage::Rect{0, 0, width, height});
    f->damage_source = capture::DamageSource::kFull;
  } else {
    f->damage = std::move(rects);
    f->damage_source = capture::DamageSource::kCompositor;
  }
  Publish(std::move(f));
}

bool FrameFeeder::PushMemfdAsDmabuf(const uint8_t* data, uint32_t width, uint32_t height, uint32_t stride,
                                    const std::string& format, uint32_t drm_format, uint64_t modifier, std::string* error) {
  if (closed_.load()) return true;
  constexpr uint32_t kOffset = 4096;     // planes need not start at 0
  const uint32_t pitch = width * 4 + 64;  // nor be tightly packed
  const size_t total = kOffset + static_cast<size_t>(pitch) * height;
  const int fd = memfd_create("wl-feeder-dmabuf", MFD_CLOEXEC);
  if (fd < 0) {
    *error = std::string("memfd_create: ") + std::strerror(errno);
    return false;
  }
  std::vector<uint8_t> buf(total, 0);
  for (uint32_t y = 0; y < height; ++y)
    std::memcpy(buf.data() + kOffset + static_cast<size_t>(y) * pitch, data + static_cast<size_t>(y) * stride, width * 4);
  if (pwrite(fd, buf.data(), total, 0) != static_cast<ssize_t>(total)) {
    *error = std::string("pwrite: ") + std::strerror(errno);
    close(fd);
    return false;
  }
  auto planes = std::make_shared<capture::DmabufPlanes>();
  planes->drm_format = drm_format;
  planes->modifier = modifier;
  planes->n_planes = 1;
  planes->fds[0] = fd;  // owned by the planes from here on
  planes->offsets[0] = kOffset;
  planes->strides[0] = pitch;
  auto f = std::make_shared<capture::Frame>();
  f->width = width;
  f->height = height;
  f->stride = pitch;
  f->format_name = format;
  f->dmabuf = std::move(planes);
  f->damage.assign(1, damage::Rect{0, 0, width, height});
  f->damage_source = capture::DamageSource::kFull;
  Publish(std::move(f));
  return true;
}

uint64_t FrameFeeder::SharedMemoryRequests(std::string* last_reason) const {
  std::lock_guard<std::mutex> lock(shm_mu_);
  *last_reason = shm_reason_;
  return shm_requests_;
}

void FrameFeeder::RequestSharedMemory(const std::string& reason) {
  std::lock_guard<std::mutex> lock(shm_mu_);
  ++shm_requests_;
  shm_reason_ = reason;
}

size_t FrameFeeder::Load(const std::string& path, uint32_t width, uint32_t height, const std::string& format, size_t count,
                         std::string* error) {
  StopPlayer();
  loaded_.clear();
  FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return 0;
  }
  const size_t bytes = static_cast<size_t>(width) * height * 4;
  for (size_t i = 0; i < count; ++i) {
    auto f = std::make_shared<capture::Frame>();
    f->width = width;
    f->height = height;
    f->stride = width * 4;
    f->format_name = format;
    f->pixels.resize(bytes);
    if (std::fread(f->pixels.data(), 1, bytes, file) != bytes) break;
    f->damage.assign(1, damage::Rect{0, 0, width, height});
    f->damage_source = capture::DamageSource::kFull;
    loaded_.push_back(std::move(f));
  }
  std::fclose(file);
  return loaded_.size();
}

void FrameFeeder::Play(double fps, uint32_t loops) {
  StopPlayer();
  stop_player_.store(false);
  playing_.store(true);
  played_.store(0);
  player_ = std::thread([this, fps, loops] {
    const uint64_t interval = fps > 0 ? static_cast<uint64_t>(1e9 / fps) : 0;
    uint64_t next = MonoNs();
    for (uint32_t l = 0; l < loops && !stop_player_.load(); ++l) {
      for (const auto& src : loaded_) {
        if (stop_player_.load() || closed_.load()) break;
        if (interval == 0) {
          // As fast as the encoder goes: wait until the previous frame was taken.
          fanout_.WaitEmpty([&] { return stop_player_.load() || closed_.load(); });
        } else {
          const uint64_t now = MonoNs();
          if (next > now) {
            timespec ts{static_cast<time_t>((next - now) / 1'000'000'000ull), static_cast<long>((next - now) % 1'000'000'000ull)};
            nanosleep(&ts, nullptr);
          }
          next += interval;
        }
        // The loaded frame itself, no copy of its pixels: its header (seq, times) is rewritten, which
        // is safe because the encoder holds at most the frame before it (Load() needs >= 2 frames
        // to loop; a single frame is copied).
        std::shared_ptr<capture::Frame> f = loaded_.size() > 1 ? src : std::make_shared<capture::Frame>(*src);
        f->process_ns = 0;
        Publish(std::move(f));
        played_.fetch_add(1);
      }
    }
    playing_.store(false);
  });
}

void FrameFeeder::StopPlayer() {
  stop_player_.store(true);
  fanout_.Wake();
  if (player_.joinable()) player_.join();
  playing_.store(false);
}

void FrameFeeder::Close() {
  if (closed_.exchange(true)) return;
  fanout_.Wake();
  StopPlayer();
  // Loaded frames can be gigabytes (4K bench): free them now, not when the JS wrapper is collected.
  loaded_.clear();
  loaded_.shrink_to_fit();
  fanout_.Close();
}

capture::LatestFrame FrameFeeder::WaitLatest(std::chrono::nanoseconds timeout) {
  return default_consumer_.Get(fanout_)->Wait(timeout, closed_);
}

capture::LatestFrame FrameFeeder::TryTakeLatest() { return default_consumer_.Get(fanout_)->TryTake(); }

capture::FramePtr FrameFeeder::PeekLatest() const { return fanout_.Peek(); }

}  // namespace wl::encode
