// The encoder-facing interface of the capture stage (wl::capture::LatestFrameSource), exercised the
// way the native encoder will use it, against a real PipeWire node. Run by test/capture/pipewire.test.ts
// with PIPEWIRE_RUNTIME_DIR set and the node id of an animating pw_video_producer:
//   capture_source_test <node-id>
// Prints TAP; exits non-zero on failure.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "capture/pw_capture.h"

using namespace std::chrono_literals;
using wl::capture::DamageSource;
using wl::capture::LatestFrame;

namespace {

int g_count = 0, g_failed = 0;

void Check(bool ok, const std::string& name, const std::string& detail = "") {
  ++g_count;
  if (ok) {
    std::printf("ok %d - %s\n", g_count, name.c_str());
  } else {
    ++g_failed;
    std::printf("not ok %d - %s\n  # %s\n", g_count, name.c_str(), detail.c_str());
  }
  std::fflush(stdout);
}

struct NullSink : wl::capture::EventSink {
  void OnStateChanged(wl::capture::StreamState, const std::string&) override {}
  void OnFormatChanged(const wl::capture::NegotiatedFormat&) override {}
  void OnFrameAvailable(const wl::capture::FramePtr&) override {}
  void OnCursorChanged(const wl::capture::CursorInfo&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: capture_source_test <node-id>\n");
    return 2;
  }
  pw_init(nullptr, nullptr);
  std::printf("TAP version 13\n");
  NullSink sink;
  wl::capture::CaptureOptions opts;
  opts.node_id = static_cast<uint32_t>(std::strtoul(argv[1], nullptr, 10));
  std::string error;
  auto capture = wl::capture::PipeWireCapture::Create(opts, &sink, &error);
  Check(capture != nullptr, "connects to the daemon", error);
  if (!capture) return 1;

  LatestFrame first = capture->WaitLatest(5s);
  Check(static_cast<bool>(first), "WaitLatest returns the first frame");
  if (!first) return 1;
  Check(first.damage_source == DamageSource::kFull && first.damage.size() == 1 &&
            first.damage[0].width == first.frame->width && first.damage[0].height == first.frame->height,
        "the first frame is fully damaged");
  Check(first.frame->pixels.size() == static_cast<size_t>(first.frame->stride) * first.frame->height &&
            first.frame->stride == first.frame->width * 4,
        "the frame is tightly packed native memory");

  // Leave the mailbox alone while the producer animates: frames are replaced, and their damage merges.
  std::this_thread::sleep_for(400ms);
  LatestFrame late = capture->TryTakeLatest();
  Check(static_cast<bool>(late), "TryTakeLatest returns the newest frame after a pause");
  if (late) {
    Check(late.frames_merged >= 3, "frames replaced in the slot are counted",
          "frames_merged " + std::to_string(late.frames_merged));
    Check(late.frame->seq == first.frame->seq + late.frames_merged + 1, "seq skips exactly the merged frames",
          std::to_string(first.frame->seq) + " -> " + std::to_string(late.frame->seq));
    uint64_t area = 0;
    for (const auto& r : late.damage) area += static_cast<uint64_t>(r.width) * r.height;
    uint64_t own = 0;
    for (const auto& r : late.frame->damage) own += static_cast<uint64_t>(r.width) * r.height;
    Check(area > own, "the taken damage covers the missed frames' damage too",
          "merged area " + std::to_string(area) + ", own " + std::to_string(own));
  }
  Check(!capture->TryTakeLatest(), "the mailbox is empty right after a take");

  uint64_t last_seq = late ? late.frame->seq : first.frame->seq;
  bool increasing = true;
  int got = 0;
  for (int i = 0; i < 10; ++i) {
    LatestFrame f = capture->WaitLatest(500ms);
    if (!f) continue;
    ++got;
    if (f.frame->seq <= last_seq) increasing = false;
    last_seq = f.frame->seq;
  }
  Check(got == 10 && increasing, "WaitLatest delivers new frames in order", "got " + std::to_string(got));

  // A frame a consumer holds stays valid through close(); a blocked consumer wakes at once.
  wl::capture::FramePtr held = capture->PeekLatest();
  std::chrono::steady_clock::duration waited{};
  bool got_after_close = true;
  std::thread consumer([&] {
    while (capture->TryTakeLatest()) {
    }
    auto t0 = std::chrono::steady_clock::now();
    // Loops like the encoder: only a closed source ends it.
    for (;;) {
      LatestFrame f = capture->WaitLatest(10s);
      if (!f && capture->IsClosed()) break;
    }
    waited = std::chrono::steady_clock::now() - t0;
    got_after_close = static_cast<bool>(capture->WaitLatest(1s));
  });
  std::this_thread::sleep_for(200ms);
  auto close_t0 = std::chrono::steady_clock::now();
  capture->Close();
  auto close_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - close_t0).count();
  consumer.join();
  Check(close_ms < 1000, "Close() returns promptly", std::to_string(close_ms) + " ms");
  Check(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count() < 2000, "a consumer blocked in WaitLatest wakes on close");
  Check(!got_after_close, "WaitLatest returns nothing once closed, without waiting");
  Check(capture->IsClosed(), "IsClosed()");
  uint64_t sum = 0;
  if (held) for (size_t i = 0; i < held->pixels.size(); i += 4096) sum += held->pixels[i];
  Check(held != nullptr && held->pixels.size() == static_cast<size_t>(held->stride) * held->height,
        "a held frame is still readable after close", std::to_string(sum));
  capture.reset();
  std::printf("1..%d\n# failed %d\n", g_count, g_failed);
  pw_deinit();
  return g_failed == 0 ? 0 : 1;
}
