// Unit tests for the damage-aware colour conversion (native/src/encode/convert.cc). Prints TAP; exits
// non-zero on failure. The banded conversion must never drift from a full one: sequences of frames with
// random damage (edge rows, odd sizes, rects partly outside, one-row rects on odd rows, a picture the
// "encoder" still references) are converted both ways and every output plane must be byte-identical.
//   convert_test          the tests
//   convert_test --bench  full vs banded conversion time at 1080p for a range of damaged fractions
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "encode/convert.h"

extern "C" {
#include <libavutil/frame.h>
#include <libavutil/pixdesc.h>
}

using wl::capture::DamageSource;
using wl::capture::Frame;
using wl::capture::FramePtr;
using wl::damage::Rect;
using wl::encode::Converter;
using wl::encode::DamageRowBands;
using wl::encode::RowBand;

namespace {

int g_failed = 0;
int g_count = 0;

void Report(bool ok, const std::string& name, const std::string& why = "") {
  ++g_count;
  if (!ok) ++g_failed;
  std::printf("%s %d - %s\n", ok ? "ok" : "not ok", g_count, name.c_str());
  if (!ok && !why.empty()) std::printf("  # %s\n", why.c_str());
  std::fflush(stdout);
}

std::shared_ptr<Frame> NewFrame(uint32_t w, uint32_t h, const std::string& format, uint64_t seq) {
  auto f = std::make_shared<Frame>();
  f->seq = seq;
  f->width = w;
  f->height = h;
  f->stride = w * 4;
  f->format_name = format;
  // One row of (constant) padding after the picture: for odd widths swscale reads one pixel past the
  // last row, which must not make two conversions of the same frame differ.
  f->pixels.resize(static_cast<size_t>(f->stride) * (h + 1));
  return f;
}

void Fill(Frame* f, const Rect& r, std::mt19937* rng) {
  Rect c = r;
  if (!wl::damage::Clip(&c, f->width, f->height)) return;
  // Mostly smooth content with some noise, so 2x2 chroma averaging and rounding both matter.
  const uint32_t base = (*rng)();
  for (uint32_t y = c.y; y < c.y + c.height; ++y) {
    uint8_t* row = f->pixels.data() + static_cast<size_t>(y) * f->stride;
    for (uint32_t x = c.x; x < c.x + c.width; ++x) {
      const uint32_t n = (*rng)();
      const bool noisy = (n & 7) == 0;
      row[x * 4 + 0] = static_cast<uint8_t>(noisy ? n >> 8 : (base + x) & 0xff);
      row[x * 4 + 1] = static_cast<uint8_t>(noisy ? n >> 16 : (base >> 8) + y);
      row[x * 4 + 2] = static_cast<uint8_t>(noisy ? n >> 24 : (base >> 16) + x + y);
      row[x * 4 + 3] = static_cast<uint8_t>(n);
    }
  }
}

/** First differing plane/row/byte of the visible area, or "" when equal. */
std::string ComparePlanes(const AVFrame* a, const AVFrame* b) {
  const AVPixFmtDescriptor* d = av_pix_fmt_desc_get(static_cast<AVPixelFormat>(a->format));
  if (a->format != b->format || a->width != b->width || a->height != b->height) return "format/size differ";
  int planes = 0;
  for (int i = 0; i < d->nb_components; ++i) planes = std::max(planes, d->comp[i].plane + 1);
  for (int p = 0; p < planes; ++p) {
    const bool chroma = p > 0;
    const int ph = chroma ? -((-a->height) >> d->log2_chroma_h) : a->height;
    int pw = chroma ? -((-a->width) >> d->log2_chroma_w) : a->width;
    if (d->flags & AV_PIX_FMT_FLAG_RGB) pw = a->width * 4;
    else if (chroma && planes == 2) pw *= 2;  // NV12: interleaved UV
    for (int y = 0; y < ph; ++y) {
      const uint8_t* ra = a->data[p] + static_cast<ptrdiff_t>(y) * a->linesize[p];
      const uint8_t* rb = b->data[p] + static_cast<ptrdiff_t>(y) * b->linesize[p];
      if (std::memcmp(ra, rb, pw) != 0) {
        int x = 0;
        while (ra[x] == rb[x]) ++x;
        return "plane " + std::to_string(p) + " row " + std::to_string(y) + " byte " + std::to_string(x) + ": " +
               std::to_string(ra[x]) + " vs " + std::to_string(rb[x]);
      }
    }
  }
  return "";
}

/** A random damage list: typical small rects plus edge cases. */
std::vector<Rect> RandomDamage(uint32_t w, uint32_t h, std::mt19937* rng) {
  std::vector<Rect> out;
  auto R = [rng](uint32_t n) { return static_cast<uint32_t>((*rng)() % n); };
  const int n = 1 + static_cast<int>(R(4));
  for (int i = 0; i < n; ++i) {
    Rect r;
    switch (R(8)) {
      case 0: r = Rect{R(w), 0, 1 + R(w), 1}; break;                            // top row
      case 1: r = Rect{R(w), h - 1, 1 + R(w), 1}; break;                        // bottom row
      case 2: r = Rect{R(w), (R(h)) | 1, 1 + R(8), 1}; break;           // one odd row
      case 3: r = Rect{0, R(h), w, 1 + R(5)}; break;                            // full width
      case 4: r = Rect{R(w), R(h), w + 100, h + 100}; break;                    // partly outside
      case 5: r = Rect{R(w), R(h), 0, 3}; break;                                // empty
      default: r = Rect{R(w), R(h), 1 + R(64), 1 + R(40)}; break;  // small
    }
    out.push_back(r);
  }
  return out;
}

struct Case {
  uint32_t w, h;
  AVPixelFormat dst;
  const char* src;
  double full_ratio;
};

void RunSequence(const Case& c, uint32_t seed) {
  const std::string name = std::to_string(c.w) + "x" + std::to_string(c.h) + " " + c.src + " -> " +
                           av_get_pix_fmt_name(c.dst) + " (full above " + std::to_string(c.full_ratio).substr(0, 4) + ")";
  std::mt19937 rng(seed);
  Converter banded, full;
  banded.SetFullRatio(c.full_ratio);
  banded.SetThreads(2);
  full.SetThreads(getenv("REF_THREADS") ? atoi(getenv("REF_THREADS")) : 1);
  if (getenv("BAND_RATIO")) banded.SetFullRatio(atof(getenv("BAND_RATIO")));
  uint64_t seq = 0;
  auto prev = NewFrame(c.w, c.h, c.src, ++seq);
  Fill(prev.get(), Rect{0, 0, c.w, c.h}, &rng);
  std::string err, diff;
  int banded_frames = 0, frames = 0, nothing_to_do = 0;
  AVFrame* held = nullptr;  // the "encoder" keeps a reference to the picture now and then
  bool ok = banded.Convert(*prev, prev, c.dst, nullptr, true, &err) && full.Convert(*prev, prev, c.dst, nullptr, true, &err);
  if (ok) diff = ComparePlanes(banded.Picture(), full.Picture());
  for (int i = 0; ok && diff.empty() && i < 40; ++i) {
    auto f = NewFrame(c.w, c.h, c.src, ++seq);
    f->pixels = prev->pixels;
    std::vector<Rect> damage = RandomDamage(c.w, c.h, &rng);
    for (const Rect& r : damage) Fill(f.get(), r, &rng);
    const bool full_source = rng() % 10 == 0;
    if (full_source) Fill(f.get(), Rect{0, 0, c.w, c.h}, &rng);  // a "full" frame changes everything
    if (rng() % 3 == 0 && held == nullptr) held = av_frame_clone(banded.Picture());
    else if (held != nullptr) av_frame_free(&held);
    ok = banded.Convert(*f, f, c.dst, &damage, full_source, &err) && full.Convert(*f, f, c.dst, nullptr, true, &err);
    if (!ok) break;
    ++frames;
    if (!banded.Last().full) ++banded_frames;
    if (!banded.Last().full && banded.Last().rows == 0) ++nothing_to_do;
    if (full_source && !banded.Last().full) diff = "a full damage source was converted banded";
    if (diff.empty()) diff = ComparePlanes(banded.Picture(), full.Picture());
    if (!diff.empty()) diff = "frame " + std::to_string(i) + ": " + diff;
    prev = f;
  }
  if (held != nullptr) av_frame_free(&held);
  // Even sizes must really take the banded path; odd and tiny ones (no encoder takes them) are always whole.
  const bool even = c.w % 2 == 0 && c.h % 2 == 0 && c.w >= 16;
  if (ok && diff.empty() && even && banded_frames == nothing_to_do) diff = "no frame took the banded path";
  if (ok && diff.empty() && !even && banded_frames > nothing_to_do) diff = "an odd size was converted in bands";
  Report(ok && diff.empty(), name + ": banded == full over " + std::to_string(frames) + " frames (" +
                                 std::to_string(banded_frames - nothing_to_do) + " banded)",
         ok ? diff : err);
}

void TestBands() {
  auto eq = [](const std::vector<RowBand>& a, const std::vector<RowBand>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].y != b[i].y || a[i].height != b[i].height) return false;
    return true;
  };
  auto str = [](const std::vector<RowBand>& a) {
    std::string s;
    for (const RowBand& b : a) s += "[" + std::to_string(b.y) + "+" + std::to_string(b.height) + "]";
    return s;
  };
  auto check = [&](const char* name, const std::vector<Rect>& d, uint32_t h, uint32_t gap, const std::vector<RowBand>& want) {
    const std::vector<RowBand> got = DamageRowBands(d, 100, h, 2, gap);
    Report(eq(got, want), std::string("bands: ") + name, "got " + str(got) + " want " + str(want));
  };
  check("an odd one-row rect rounds out to its even pair", {Rect{5, 7, 3, 1}}, 100, 0, {{6, 2}});
  check("an even one-row rect rounds out to two rows", {Rect{5, 8, 3, 1}}, 100, 0, {{8, 2}});
  check("the last row of an odd height ends at the height", {Rect{0, 98, 10, 1}}, 99, 0, {{98, 1}});
  check("a rect running past the bottom is clipped", {Rect{0, 90, 10, 500}}, 99, 0, {{90, 9}});
  check("rects outside or empty are dropped", {Rect{0, 120, 10, 5}, Rect{200, 4, 10, 5}, Rect{0, 4, 0, 5}}, 100, 0, {});
  check("unsorted overlapping rects merge", {Rect{0, 40, 1, 10}, Rect{0, 10, 1, 5}, Rect{0, 12, 1, 30}}, 100, 0, {{10, 40}});
  check("bands within the gap merge, beyond it they do not", {Rect{0, 0, 1, 2}, Rect{0, 10, 1, 2}, Rect{0, 30, 1, 2}}, 100, 8,
        {{0, 12}, {30, 2}});
  check("touching bands merge", {Rect{0, 0, 1, 4}, Rect{0, 4, 1, 4}}, 100, 0, {{0, 8}});
}

void TestInvalidation() {
  std::mt19937 rng(7);
  Converter conv;
  conv.SetFullRatio(1.01);
  std::string err;
  auto a = NewFrame(64, 48, "BGRx", 1);
  Fill(a.get(), Rect{0, 0, 64, 48}, &rng);
  bool ok = conv.Convert(*a, a, AV_PIX_FMT_YUV420P, nullptr, false, &err);
  Report(ok && conv.Last().full, "the first frame is converted whole", err);
  const std::vector<Rect> small{Rect{0, 10, 4, 4}};
  ok = conv.Convert(*a, a, AV_PIX_FMT_YUV420P, nullptr, false, &err);
  Report(ok && conv.Last().reused, "the same frame again (a refresh) reuses the picture", err);
  auto b = NewFrame(64, 48, "BGRx", 2);
  b->pixels = a->pixels;
  Fill(b.get(), small[0], &rng);
  ok = conv.Convert(*b, b, AV_PIX_FMT_YUV420P, &small, false, &err);
  Report(ok && !conv.Last().full && conv.Last().rows == 4 && conv.Last().bands == 1, "small damage converts its rows only",
         err + " rows " + std::to_string(conv.Last().rows));
  auto c = NewFrame(64, 48, "BGRx", 3);
  c->pixels = b->pixels;
  conv.Invalidate();
  ok = conv.Convert(*c, c, AV_PIX_FMT_YUV420P, &small, false, &err);
  Report(ok && conv.Last().full, "after Invalidate() (backend switch, untaken frame) the next frame is whole", err);
  auto d = NewFrame(64, 48, "BGRx", 4);
  d->pixels = c->pixels;
  ok = conv.Convert(*d, d, AV_PIX_FMT_NV12, &small, false, &err);
  Report(ok && conv.Last().full, "a format change converts the whole frame", err);
  auto e = NewFrame(66, 48, "BGRx", 5);
  Fill(e.get(), Rect{0, 0, 66, 48}, &rng);
  ok = conv.Convert(*e, e, AV_PIX_FMT_NV12, &small, false, &err);
  Report(ok && conv.Last().full, "a size change converts the whole frame", err);
  auto f = NewFrame(66, 48, "BGRx", 6);
  f->pixels = e->pixels;
  const std::vector<Rect> big{Rect{0, 0, 66, 46}};
  Converter def;
  ok = def.Convert(*e, e, AV_PIX_FMT_NV12, nullptr, true, &err) && def.Convert(*f, f, AV_PIX_FMT_NV12, &big, false, &err);
  Report(ok && def.Last().full, "damage over the full-conversion fraction converts the whole frame", err);
  auto g = NewFrame(66, 48, "NV21?", 7);
  ok = def.Convert(*g, g, AV_PIX_FMT_NV12, &small, false, &err);
  auto h2 = NewFrame(66, 48, "BGRx", 8);
  h2->pixels = f->pixels;
  const bool ok2 = def.Convert(*h2, h2, AV_PIX_FMT_NV12, &small, false, &err);
  Report(!ok && ok2 && def.Last().full, "after a failed conversion the next frame is whole", err);
}

double TimeMs(Converter* conv, const std::vector<std::shared_ptr<Frame>>& frames, const std::vector<Rect>& damage, bool full) {
  std::string err;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& f : frames) conv->Convert(*f, f, AV_PIX_FMT_YUV420P, &damage, full, &err);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / frames.size();
}

void Bench() {
  const uint32_t w = 1920, h = 1080;
  std::mt19937 rng(1);
  std::vector<std::shared_ptr<Frame>> frames;
  for (int i = 0; i < 2; ++i) {
    frames.push_back(NewFrame(w, h, "BGRx", 0));
    Fill(frames.back().get(), Rect{0, 0, w, h}, &rng);
  }
  std::vector<std::shared_ptr<Frame>> seqd;
  for (int i = 0; i < 60; ++i) {
    auto f = std::make_shared<Frame>(*frames[i % 2]);
    f->seq = i + 1;
    seqd.push_back(f);
  }
  Converter conv;
  conv.SetFullRatio(1.01);
  std::string err;
  conv.Convert(*seqd[0], seqd[0], AV_PIX_FMT_YUV420P, nullptr, true, &err);
  const double full = TimeMs(&conv, seqd, {}, true);
  std::printf("# full: %.2f ms/frame\n", full);
  for (double frac : {0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0}) {
    const std::vector<Rect> d{Rect{100, static_cast<uint32_t>((1 - frac) * h), 300, static_cast<uint32_t>(frac * h)}};
    const std::vector<Rect> d3{Rect{0, 0, 10, static_cast<uint32_t>(frac * h / 3)}, Rect{0, h / 3, 10, static_cast<uint32_t>(frac * h / 3)},
                               Rect{0, 2 * h / 3, 10, static_cast<uint32_t>(frac * h / 3)}};
    const double one = TimeMs(&conv, seqd, d, false);
    const double three = TimeMs(&conv, seqd, d3, false);
    std::printf("# %.0f %% of the rows: one band %.2f ms (%.2f x full), three bands %.2f ms\n", frac * 100, one, one / full, three);
  }
  const std::vector<Rect> tiny{Rect{10, 10, 64, 32}};
  std::printf("# a 64x32 rect: %.3f ms\n", TimeMs(&conv, seqd, tiny, false));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
    Bench();
    return 0;
  }
  TestBands();
  TestInvalidation();
  const Case cases[] = {
      {1920, 1080, AV_PIX_FMT_YUV420P, "BGRx", 1.01},
      {1920, 1080, AV_PIX_FMT_NV12, "BGRx", Converter::kDefaultFullRatio},
      {1921, 1079, AV_PIX_FMT_YUV420P, "BGRx", 1.01},
      {1279, 719, AV_PIX_FMT_NV12, "RGBx", 1.01},
      {333, 211, AV_PIX_FMT_YUV420P, "xRGB", 1.01},
      {64, 2, AV_PIX_FMT_YUV420P, "BGRx", 1.01},
      {1280, 720, AV_PIX_FMT_NV12, "RGBx", 1.01},
      {31, 17, AV_PIX_FMT_NV12, "BGRA", 1.01},
      {8, 3, AV_PIX_FMT_YUV420P, "BGRx", 1.01},
      {4, 6, AV_PIX_FMT_NV12, "BGRx", 1.01},
      {16, 6, AV_PIX_FMT_NV12, "BGRx", 1.01},
      {1366, 768, AV_PIX_FMT_NV12, "BGRx", 1.01},
      {640, 480, AV_PIX_FMT_YUV420P, "BGRx", Converter::kDefaultFullRatio},
  };
  uint32_t seed = 11;
  if (getenv("CASE")) {
    Case c{0, 0, AV_PIX_FMT_NV12, "RGBx", 1.01};
    char fmt[16];
    std::sscanf(getenv("CASE"), "%u,%u,%15s", &c.w, &c.h, fmt);
    c.dst = std::strcmp(fmt, "nv12") == 0 ? AV_PIX_FMT_NV12 : AV_PIX_FMT_YUV420P;
    for (int i = 0; i < 10; ++i) RunSequence(c, seed++);
  } else {
    for (const Case& c : cases) RunSequence(c, seed++);
  }
  std::printf("1..%d\n", g_count);
  return g_failed == 0 ? 0 : 1;
}
