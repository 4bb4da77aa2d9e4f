// Unit tests for the tile differ (native/src/damage/tiles.cc). Prints TAP; exits non-zero on failure.
// Each case is checked against a naive per-pixel reference: the output rects must cover exactly the
// pixels of the dirty tiles (clipped to the frame), with no overlap.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "damage/tiles.h"

using wl::damage::DiffTiles;
using wl::damage::Rect;
using wl::damage::TileDiffInput;

namespace {

int g_failed = 0;
int g_count = 0;

struct Image {
  uint32_t w, h;
  size_t stride;
  std::vector<uint8_t> px;
  Image(uint32_t w_, uint32_t h_, size_t stride_, uint32_t seed) : w(w_), h(h_), stride(stride_), px(stride_ * h_) {
    std::mt19937 rng(seed);
    for (auto& b : px) b = static_cast<uint8_t>(rng());
  }
  uint8_t* at(uint32_t x, uint32_t y) { return px.data() + y * stride + x * 4; }
};

// Copies the visible pixels of `a` into `b` but leaves `b`'s stride padding different, so a differ
// that looks at padding bytes fails.
void CopyVisible(const Image& a, Image* b) {
  for (uint32_t y = 0; y < a.h; ++y) std::memcpy(b->px.data() + y * b->stride, a.px.data() + y * a.stride, a.w * 4);
}

std::string Check(const Image& prev, const Image& cur, uint32_t tile, size_t expect_rects_max, bool fused) {
  TileDiffInput in;
  in.prev = prev.px.data();
  in.prev_stride = prev.stride;
  in.cur = cur.px.data();
  in.cur_stride = cur.stride;
  in.width = cur.w;
  in.height = cur.h;
  in.tile_size = tile;
  std::vector<uint8_t> dst;
  if (fused) {
    dst.assign(cur.w * 4 * cur.h, 0);
    in.dst = dst.data();
    in.dst_stride = cur.w * 4;
  }
  std::vector<Rect> rects;
  const size_t dirty_tiles = DiffTiles(in, &rects);

  // Reference: which tiles have any differing visible byte.
  const uint32_t cols = (cur.w + tile - 1) / tile, rows = (cur.h + tile - 1) / tile;
  std::vector<uint8_t> want_tile(cols * rows, 0);
  size_t want_dirty = 0;
  for (uint32_t y = 0; y < cur.h; ++y)
    for (uint32_t x = 0; x < cur.w; ++x)
      if (std::memcmp(prev.px.data() + y * prev.stride + x * 4, cur.px.data() + y * cur.stride + x * 4, 4) != 0) {
        auto& t = want_tile[(y / tile) * cols + x / tile];
        if (!t) ++want_dirty;
        t = 1;
      }
  if (dirty_tiles != want_dirty) return "dirty tiles " + std::to_string(dirty_tiles) + " != " + std::to_string(want_dirty);
  std::vector<uint8_t> covered(static_cast<size_t>(cur.w) * cur.h, 0);
  for (const Rect& r : rects) {
    if (r.width == 0 || r.height == 0) return "empty rect";
    if (r.x + r.width > cur.w || r.y + r.height > cur.h) return "rect outside the frame";
    for (uint32_t y = r.y; y < r.y + r.height; ++y)
      for (uint32_t x = r.x; x < r.x + r.width; ++x) {
        if (covered[y * cur.w + x]) return "rects overlap";
        covered[y * cur.w + x] = 1;
      }
  }
  for (uint32_t y = 0; y < cur.h; ++y)
    for (uint32_t x = 0; x < cur.w; ++x)
      if (covered[y * cur.w + x] != want_tile[(y / tile) * cols + x / tile])
        return "coverage differs at " + std::to_string(x) + "," + std::to_string(y);
  if (rects.size() > expect_rects_max)
    return std::to_string(rects.size()) + " rects, expected at most " + std::to_string(expect_rects_max);
  if (fused) {
    for (uint32_t y = 0; y < cur.h; ++y)
      if (std::memcmp(dst.data() + y * cur.w * 4, cur.px.data() + y * cur.stride, cur.w * 4) != 0) return "fused copy differs";
  }
  return "";
}

void Test(const std::string& name, const std::function<std::string()>& fn) {
  ++g_count;
  std::string err = fn();
  if (err.empty()) {
    std::printf("ok %d - %s\n", g_count, name.c_str());
  } else {
    ++g_failed;
    std::printf("not ok %d - %s\n  # %s\n", g_count, name.c_str(), err.c_str());
  }
}

// prev == cur except the listed pixels, which are flipped.
std::string Case(uint32_t w, uint32_t h, size_t stride, uint32_t tile, const std::vector<std::pair<uint32_t, uint32_t>>& pixels,
                 size_t max_rects, bool fused = false) {
  Image prev(w, h, stride, 1), cur(w, h, stride, 2);
  CopyVisible(prev, &cur);
  for (auto [x, y] : pixels) cur.at(x, y)[1] ^= 0x01;  // a one-bit change in one channel
  return Check(prev, cur, tile, max_rects, fused);
}

std::vector<std::pair<uint32_t, uint32_t>> Corners(uint32_t w, uint32_t h) {
  // Deduplicated: on a 1-pixel-wide or -high frame two corners are the same pixel, and flipping it
  // twice would undo the change.
  std::vector<std::pair<uint32_t, uint32_t>> out;
  for (auto c : std::vector<std::pair<uint32_t, uint32_t>>{{0, 0}, {w - 1, 0}, {0, h - 1}, {w - 1, h - 1}})
    if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
  return out;
}

}  // namespace

int main() {
  std::printf("TAP version 13\n");
  Test("identical frames -> zero damage (1920x1080)", [] { return Case(1920, 1080, 1920 * 4, 64, {}, 0); });
  Test("identical frames, padding differs -> zero damage", [] {
    Image prev(100, 70, 512, 3), cur(100, 70, 512, 4);  // random padding in both
    CopyVisible(prev, &cur);
    return Check(prev, cur, 64, 0, false);
  });
  for (auto [w, h] : std::vector<std::pair<uint32_t, uint32_t>>{{1920, 1080}, {1921, 1079}, {65, 65}, {64, 64}, {63, 1}, {1, 1}}) {
    const std::string sz = std::to_string(w) + "x" + std::to_string(h);
    for (auto c : Corners(w, h)) {
      Test("one pixel at " + std::to_string(c.first) + "," + std::to_string(c.second) + " of " + sz, [=] {
        return Case(w, h, w * 4, 64, {c}, 1);
      });
    }
    Test("all four corners of " + sz, [=] { return Case(w, h, w * 4, 64, Corners(w, h), 4); });
    Test("stride > width*4, corners of " + sz, [=] { return Case(w, h, w * 4 + 256 + 12, 64, Corners(w, h), 4); });
  }
  Test("full change of 1921x1079 -> one rect", [] {
    Image prev(1921, 1079, 1921 * 4 + 64, 5), cur(1921, 1079, 1921 * 4 + 64, 6);
    return Check(prev, cur, 64, 1, false);
  });
  Test("full change of 1x1 -> one rect", [] {
    Image prev(1, 1, 4, 5), cur(1, 1, 4, 6);
    cur.px[0] = static_cast<uint8_t>(prev.px[0] + 1);
    return Check(prev, cur, 64, 1, false);
  });
  Test("tile size 16 and 128 on 65x65", [] {
    std::string e = Case(65, 65, 65 * 4, 16, Corners(65, 65), 4);
    return e.empty() ? Case(65, 65, 65 * 4, 128, Corners(65, 65), 1) : e;
  });
  Test("column of changes merges vertically", [] {
    std::vector<std::pair<uint32_t, uint32_t>> px;
    for (uint32_t y = 0; y < 1080; y += 10) px.push_back({700, y});
    return Case(1920, 1080, 1920 * 4, 64, px, 1);
  });
  Test("fused copy reproduces the new frame (1921x1079, padded)", [] {
    return Case(1921, 1079, 1921 * 4 + 100, 64, {{5, 5}, {1900, 1000}}, 2, true);
  });
  Test("random changes agree with the per-pixel reference", [] {
    std::mt19937 rng(42);
    for (int iter = 0; iter < 40; ++iter) {
      const uint32_t w = 1 + rng() % 300, h = 1 + rng() % 300, tile = 1 + rng() % 80;
      std::vector<std::pair<uint32_t, uint32_t>> px;
      const int n = static_cast<int>(rng() % 20);
      for (int i = 0; i < n; ++i) px.push_back({static_cast<uint32_t>(rng() % w), static_cast<uint32_t>(rng() % h)});
      std::string e = Case(w, h, w * 4 + (rng() % 3) * 4, tile, px, SIZE_MAX, iter % 2 == 0);
      if (!e.empty()) return "w=" + std::to_string(w) + " h=" + std::to_string(h) + " tile=" + std::to_string(tile) + ": " + e;
    }
    return std::string();
  });
  std::printf("1..%d\n# failed %d\n", g_count, g_failed);
  return g_failed == 0 ? 0 : 1;
}
