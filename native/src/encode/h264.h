// Just enough H.264 Annex-B parsing for the pipeline: split access units into NAL units, find the
// SPS/PPS, read profile_idc / constraint flags / level_idc (the SDP profile-level-id of what the
// encoder really produced) and tell IDR access units apart.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace wl::encode::h264 {

struct Nal {
  size_t start = 0;  // offset of the start code
  size_t size = 0;   // start code included
  uint8_t type = 0;  // nal_unit_type
};

std::vector<Nal> SplitAnnexB(const uint8_t* data, size_t size);

/** "42e01f" from an SPS NAL unit (start code included); "" when it is not one. */
std::string ProfileLevelId(const uint8_t* nal, size_t size);

struct ParameterSets {
  std::vector<uint8_t> sps;  // Annex-B, start code included
  std::vector<uint8_t> pps;
};

/** Scans an access unit: whether it has an IDR slice, SPS and PPS; updates `sets` with what it finds. */
struct AuInfo {
  bool idr = false;
  bool has_sps = false;
  bool has_pps = false;
};
AuInfo Inspect(const uint8_t* data, size_t size, ParameterSets* sets);

}  // namespace wl::encode::h264
