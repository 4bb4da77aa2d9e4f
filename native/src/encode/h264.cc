#include "encode/h264.h"

#include <cstdio>

namespace wl::encode::h264 {

std::vector<Nal> SplitAnnexB(const uint8_t* d, size_t n) {
  std::vector<Nal> out;
  size_t i = 0;
  auto start_code_at = [&](size_t p, size_t* len) {
    if (p + 3 <= n && d[p] == 0 && d[p + 1] == 0 && d[p + 2] == 1) {
      *len = 3;
      return true;
    }
    if (p + 4 <= n && d[p] == 0 && d[p + 1] == 0 && d[p + 2] == 0 && d[p + 3] == 1) {
      *len = 4;
      return true;
    }
    return false;
  };
  size_t len = 0;
  while (i < n && !start_code_at(i, &len)) ++i;
  while (i < n) {
    const size_t begin = i;
    size_t sc = 0;
    start_code_at(i, &sc);
    size_t j = i + sc;
    while (j < n && !start_code_at(j, &len)) ++j;
    Nal nal;
    nal.start = begin;
    nal.size = j - begin;
    nal.type = begin + sc < n ? (d[begin + sc] & 0x1f) : 0;
    out.push_back(nal);
    i = j;
  }
  return out;
}

std::string ProfileLevelId(const uint8_t* nal, size_t size) {
  size_t sc = (size >= 4 && nal[2] == 0) ? 4 : 3;
  if (size < sc + 4 || (nal[sc] & 0x1f) != 7) return "";
  // profile_idc, constraint_set flags, level_idc are the three bytes after the NAL header; an
  // emulation-prevention byte cannot occur inside them (profile_idc is never 0).
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%02x%02x%02x", nal[sc + 1], nal[sc + 2], nal[sc + 3]);
  return buf;
}

AuInfo Inspect(const uint8_t* data, size_t size, ParameterSets* sets) {
  AuInfo info;
  for (const Nal& nal : SplitAnnexB(data, size)) {
    switch (nal.type) {
      case 5:
        info.idr = true;
        break;
      case 7:
        info.has_sps = true;
        if (sets) sets->sps.assign(data + nal.start, data + nal.start + nal.size);
        break;
      case 8:
        info.has_pps = true;
        if (sets) sets->pps.assign(data + nal.start, data + nal.start + nal.size);
        break;
      default:
        break;
    }
  }
  return info;
}

}  // namespace wl::encode::h264
