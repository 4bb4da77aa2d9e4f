// A LatestFrameSource fed from JavaScript or from recorded raw frames instead of PipeWire: the bench
// (identical recorded frames through our path and through the ffmpeg CLI) and tests that need exact
// control over frame content and timing. Same mailboxes (one per consumer) as the capture stream.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "capture/mailbox.h"
#include "capture/frame.h"

namespace wl::encode {

class FrameFeeder final : public capture::LatestFrameSource {
 public:
  FrameFeeder() = default;
  ~FrameFeeder() override;

  /** Copies one frame in and publishes it (replacing an untaken one, whose damage is merged).
   *  `damage` empty means the whole frame changed. */
  void Push(const uint8_t* data, uint32_t width, uint32_t height, uint32_t stride, const std::string& format,
            std::vector<damage::Rect> damage);
  /** Test hook for the encoder's DMA-BUF fallback without a GPU: the frame goes into a memfd (at a
   *  page offset, rows padded) and is published as a DMA-BUF frame with `modifier`, like capture's
   *  DMA-BUF frames (dup'ed fd, no pixels). A memfd mmaps like a LINEAR DMA-BUF; nothing imports it
   *  into a GPU. Returns false + error when the memfd cannot be made. */
  bool PushMemfdAsDmabuf(const uint8_t* data, uint32_t width, uint32_t height, uint32_t stride, const std::string& format,
                         uint32_t drm_format, uint64_t modifier, std::string* error);
  /** How often a consumer asked for shared memory (RequestSharedMemory), and the last reason. */
  uint64_t SharedMemoryRequests(std::string* last_reason) const;
  void RequestSharedMemory(const std::string& reason) override;
  /** Reads `count` frames of width*height*4 bytes from a raw file into memory; returns how many. */
  size_t Load(const std::string& path, uint32_t width, uint32_t height, const std::string& format, size_t count,
              std::string* error);
  /** Publishes the loaded frames on a thread of its own: fps 0 = each as soon as the previous one was
   *  taken (as fast as the encoder goes), else at that rate (newest wins, like a screen). */
  void Play(double fps, uint32_t loops);
  size_t Played() const { return played_.load(); }
  bool Playing() const { return playing_.load(); }
  void Close();

  std::shared_ptr<capture::FrameMailbox> Subscribe() override { return fanout_.Subscribe(); }
  void Unsubscribe(const std::shared_ptr<capture::FrameMailbox>& m) override { fanout_.Unsubscribe(m); }
  capture::LatestFrame WaitLatest(std::chrono::nanoseconds timeout) override;
  capture::LatestFrame TryTakeLatest() override;
  capture::FramePtr PeekLatest() const override;
  bool IsClosed() const override { return closed_.load(); }

 private:
  void Publish(std::shared_ptr<capture::Frame> f);
  void StopPlayer();

  capture::FrameFanout fanout_;
  capture::DefaultConsumer default_consumer_;
  uint64_t seq_ = 0;  // Publish() runs on one thread at a time (Push from JS, or the player)
  std::atomic<bool> closed_{false};
  std::vector<std::shared_ptr<capture::Frame>> loaded_;
  std::thread player_;
  std::atomic<bool> stop_player_{false};
  std::atomic<bool> playing_{false};
  std::atomic<size_t> played_{0};
  mutable std::mutex shm_mu_;
  uint64_t shm_requests_ = 0;
  std::string shm_reason_;
};

}  // namespace wl::encode
