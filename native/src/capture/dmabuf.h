// DMA-BUF capture: what the PipeWire stream offers when a GPU encoder can import the producer's
// buffers (zero copy), following PipeWire's "DMA-BUF sharing" protocol (doc/dox/internals/dma-buf.dox):
//
//  * EnumFormat: for every RGB layout the importer takes, one EnumFormat with
//    SPA_FORMAT_VIDEO_modifier (flags MANDATORY | DONT_FIXATE, an enum of the importable modifiers),
//    placed before the shared-memory EnumFormat (no modifier property), which stays as the fallback.
//    The producer (the compositor's portal backend, which allocates) fixates the modifier; a consumer
//    only parses the resulting Format (spa_format_video_raw_parse: modifier + SPA_VIDEO_FLAG_MODIFIER).
//  * Buffers: dataType = 1 << SPA_DATA_DmaBuf when the negotiated Format carries a modifier,
//    MemFd | MemPtr otherwise.
//  * Modifiers: libva 1.17 (Debian 12) has no query for the modifiers a driver can import
//    (VASurfaceAttribDRMFormatModifiers only steers allocation) and libdrm's IN_FORMATS lists what
//    the display engine scans out, not what VA-API imports. So we offer DRM_FORMAT_MOD_LINEAR (every
//    VA driver imports it) and DRM_FORMAT_MOD_INVALID (the producer's implicit choice: a buffer
//    allocated on the same GPU with the driver's default layout, which its VA driver imports). What
//    libva does tell us, and we use: whether the render node has a video processor (VPP, for RGB ->
//    NV12 on the GPU) and which RGB fourccs it accepts as input.
//
// Nothing here can run on a machine without a render node: ProbeDmabufImport then says why, and the
// stream offers shared memory only. The pod building is pure and unit-tested (native/test/dmabuf_test.cc).
#pragma once

#include <spa/param/video/format-utils.h>
#include <spa/pod/builder.h>

#include <cstdint>
#include <string>
#include <vector>

namespace wl::capture {

/** What capture offers as DMA-BUF, decided once per stream. */
struct DmabufOffer {
  bool enabled = false;
  std::string device;                 // the render node the importer uses
  std::string reason;                 // enabled: what was found; otherwise why not
  std::vector<uint32_t> spa_formats;  // importable layouts (enum spa_video_format), preference order
  std::vector<uint64_t> modifiers;    // offered for every format
};

/** Checks `device` (a /dev/dri/renderD* path chosen by TS) with libva: opens it, initialises VA-API,
 *  finds the video processor and the RGB layouts it takes among `wanted` (in that order). */
DmabufOffer ProbeDmabufImport(const std::string& device, const std::vector<uint32_t>& wanted);

/** DRM fourcc of a 32-bit RGB SPA layout (SPA names bytes in memory order, DRM little-endian words:
 *  BGRx = XRGB8888); 0 for anything else. */
uint32_t DrmFourccOfSpa(uint32_t spa_format);

/** The EnumFormat params: the DMA-BUF ones (if offer.enabled) first, then the shared-memory one
 *  with `shm_formats` (first = default). Returns how many were written to `params` (<= max). */
uint32_t BuildEnumFormats(struct spa_pod_builder* b, const DmabufOffer& offer, const uint32_t* shm_formats, size_t n_shm,
                          const struct spa_pod** params, uint32_t max);

/**
 * How many buffers the consumer asks the producer for at a frame size: as many as fit in a memory
 * budget (kCaptureBufferBudgetBytes), at least 3, at most 8. Why: xdg-desktop-portal-wlr 0.7 offers
 * 2 and PipeWire recycles a buffer the consumer returned only at the producer's next cycle, so with 2 the
 * producer is out of buffers whenever the consumer is a little late (a loaded machine: every run here
 * logged hundreds of "pipewire: out of buffers"). xdpw then re-requests the screencopy, and
 * wlroots answers a copy_with_damage only at the next output commit: a change made during the shortage
 * (one cursor move, one typed character) on a screen that then stays still is not delivered until
 * something else changes. With 8 at 1080p (~64 MB of shared memory) the shortage was not seen again.
 */
constexpr uint64_t kCaptureBufferBudgetBytes = 64ull << 20;
uint32_t CaptureBufferCount(uint32_t width, uint32_t height);

/** SPA_PARAM_Buffers for the negotiated format: DMA-BUF only when the format carries a modifier;
 *  CaptureBufferCount buffers preferred (any count the producer allows is accepted). */
const struct spa_pod* BuildBuffersParam(struct spa_pod_builder* b, bool dmabuf, uint32_t width, uint32_t height);

/** Whether a negotiated (SPA_PARAM_Format) param selected DMA-BUF: it has a modifier property.
 *  `needs_fixation`: the property still has DONT_FIXATE (a producer's job; a consumer never sees it
 *  from a conforming producer). */
bool FormatSelectsDmabuf(const struct spa_pod* format, uint64_t* modifier, bool* needs_fixation);

}  // namespace wl::capture
