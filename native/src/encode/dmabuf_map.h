// The software encoders' way to read a DMA-BUF frame (a GPU backend failed mid-stream and x264 or
// OpenH264 took over while capture still delivers DMA-BUFs):
//  * LINEAR modifier: mmap the plane's fd read-only, bracketed by DMA_BUF_IOCTL_SYNC (START|READ at
//    map, END|READ at unmap) so the CPU sees what the GPU wrote; the frame is then converted like a
//    shared-memory one, from the mapping (no extra copy).
//  * any other modifier (tiled, compressed): a CPU mapping is not a linear picture, so the frame
//    cannot be used; the pipeline asks capture to renegotiate to shared memory
//    (LatestFrameSource::RequestSharedMemory) and drops frames until shared-memory ones arrive.
// Never runs here (no GPU: capture never negotiates DMA-BUF); dmabuf_test maps a memfd through it to
// check the mapping, offsets and strides (DMA_BUF_IOCTL_SYNC then answers ENOTTY, accepted only
// for fds that are not DMA-BUFs).
#pragma once

#include <string>

#include "capture/frame.h"

namespace wl::encode {

/** True for a modifier a CPU mapping reads as a plain picture. */
bool DmabufModifierIsLinear(uint64_t modifier);

/** Size of a DMA-BUF object (lseek to its end; PipeWire's maxsize/size may be 0 for DMA-BUFs). 0 on error. */
size_t DmabufObjectSize(int fd);

/** A CPU view of a single-plane LINEAR DMA-BUF frame: same geometry, `mapped` set, `mapping` owning
 *  the mmap (and the source frame, which owns the fd). nullptr + error otherwise. */
capture::FramePtr MapLinearDmabuf(const capture::FramePtr& frame, std::string* error);

}  // namespace wl::encode
