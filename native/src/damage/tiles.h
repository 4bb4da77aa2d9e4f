// Tile comparison: the damage source when the compositor sends no VideoDamage meta (GNOME/mutter, most
// producers other than xdg-desktop-portal-wlr).
//
// Why row-major with a whole-row memcmp first: in a desktop frame most rows are unchanged, and glibc's
// memcmp is already AVX2-vectorised, so an unchanged row costs one streaming compare of width*4 bytes.
// Only a row that differs is split into per-tile compares, and a tile already known to be dirty is never
// looked at again. An unchanged frame is therefore bound by memory bandwidth (two reads), a fully
// changed one costs about one compare per tile. The optional `dst` turns the pass into a fused
// copy-and-compare, so the capture stage reads the shared-memory frame exactly once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "damage/rect.h"

namespace wl::damage {

struct TileDiffInput {
  const uint8_t* prev = nullptr;  // the previous frame
  size_t prev_stride = 0;         // bytes per row, >= width * bytes_per_pixel
  const uint8_t* cur = nullptr;   // the new frame
  size_t cur_stride = 0;
  uint8_t* dst = nullptr;         // optional: each row of `cur` (width * bpp bytes) is copied here
  size_t dst_stride = 0;
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t bytes_per_pixel = 4;
  uint32_t tile_size = 64;        // square tiles; edge tiles are clipped to the frame
};

/**
 * Compares `cur` against `prev` in tiles and writes the damaged region to `out` (cleared first) as
 * rectangles: dirty tiles are merged into runs per tile row, and runs with the same x span in
 * consecutive tile rows are merged vertically. Rects are clipped to the frame and never overlap.
 * Returns the number of dirty tiles. Identical frames give zero rects.
 */
size_t DiffTiles(const TileDiffInput& in, std::vector<Rect>* out);

}  // namespace wl::damage
