// The encoder's colour conversion (capture RGB -> the backend's input format), damage-aware.
//
// The converted picture is persistent per format and size: for each frame only the row bands covered
// by its damage are converted again (swscale's output-slice API, sws_receive_slice, which computes a
// band of output rows exactly as a full conversion would: it reads whatever source rows the vertical
// chroma filter needs above and below). The whole frame is converted when the damage source says so,
// when the picture is not known to hold the previous frame (first frame, format or size change, a
// backend switch, a failed conversion: Invalidate()), and when the damage covers most rows anyway.
// Sizes that are not a whole number of chroma samples (odd width or height for 4:2:0; no encoder takes
// them) are always converted whole: swscale 6.1 rejects an unaligned last band whatever its
// documentation says, and for odd widths its RGB -> chroma reader takes the last chroma column from
// the pixel after the row (the next row's first), outside any band. Pictures under 16 pixels wide too
// (below 8, a band and a full conversion were measured to differ).
//
// Encoder thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "capture/frame.h"

extern "C" {
#include <libavutil/pixfmt.h>
}

struct AVFrame;
struct SwsContext;

namespace wl::encode {

/** A band of rows [y, y + height). */
struct RowBand {
  uint32_t y = 0;
  uint32_t height = 0;
};

/** The row bands covering `damage` in a picture of `height` rows: each rect clipped, rounded out to
 *  multiples of `align` (the last band may end at an unaligned `height`), sorted, and merged when
 *  they overlap or are at most `merge_gap` rows apart (a band costs a thread dispatch and a few
 *  rows of filter warm-up; converting a small gap is cheaper). */
std::vector<RowBand> DamageRowBands(const std::vector<damage::Rect>& damage, uint32_t width, uint32_t height,
                                    uint32_t align, uint32_t merge_gap);

/** What the last Convert() did. */
struct ConvertInfo {
  bool reused = false;  // the picture already held this frame (a refresh): nothing converted
  bool full = false;    // every row converted
  uint32_t rows = 0;    // rows converted
  uint32_t bands = 0;   // sws_receive_slice calls (0 for a full conversion)
};

class Converter {
 public:
  /** Above this fraction of the rows a full conversion is used. Measured at 1080p (convert_test --bench,
   *  2 slice threads, load ~2.5): a band costs about what the same rows cost in a full conversion (one
   *  band of 75 % of the rows 0.80x full, of 100 % 1.02x), plus ~0.05-0.1 ms per band; so
   *  banding pays almost to the end, and the last rows are left to the simpler path. */
  static constexpr double kDefaultFullRatio = 0.85;
  static constexpr uint32_t kMergeGapRows = 8;

  Converter() = default;
  ~Converter();
  Converter(const Converter&) = delete;
  Converter& operator=(const Converter&) = delete;

  /** swscale slice threads for contexts created from now on (0: one per core, at most 8). */
  void SetThreads(unsigned threads) { threads_ = threads; }
  void SetFullRatio(double ratio) { full_ratio_ = ratio; }

  /** Converts `frame` (kept alive by `keep` while swscale or the encoder reference it) into the
   *  persistent picture of format `dst`, of `out_w` x `out_h` (0: the frame's size; else scaled, and
   *  always whole). `damage`: what changed since the frame converted last; nullptr or `full` converts
   *  everything. On failure the picture is invalid (next one is full). */
  bool Convert(const capture::Frame& frame, const capture::FramePtr& keep, AVPixelFormat dst,
               const std::vector<damage::Rect>* damage, bool full, std::string* error, uint32_t out_w = 0,
               uint32_t out_h = 0);

  /** The picture no longer stands for the frame converted last (a frame was taken but not converted,
   *  the backend changed): the next Convert() converts everything. */
  void Invalidate() {
    valid_ = false;
    from_ = nullptr;
    from_seq_ = 0;
  }
  /** Frees the swscale context (and its threads) and the pictures. */
  void Reset();

  /** The converted picture (refcounted; the backend's input). */
  AVFrame* Picture() const { return converted_; }
  const ConvertInfo& Last() const { return last_; }

 private:
  unsigned threads_ = 0;
  double full_ratio_ = kDefaultFullRatio;
  SwsContext* sws_ = nullptr;
  int sws_src_fmt_ = -1;
  int sws_dst_fmt_ = -1;
  int sws_w_ = 0, sws_h_ = 0;
  int sws_out_w_ = 0, sws_out_h_ = 0;
  uint32_t align_ = 2;
  bool bands_ok_ = false;  // this size can be converted in bands (see the top of this file)
  AVFrame* converted_ = nullptr;  // persistent, refcounted
  AVFrame* src_frame_ = nullptr;  // wraps the capture buffer
  bool valid_ = false;            // converted_ holds the whole of frame `from_`
  const capture::Frame* from_ = nullptr;
  uint64_t from_seq_ = 0;
  ConvertInfo last_;
};

}  // namespace wl::encode
