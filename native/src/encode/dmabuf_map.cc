#include "encode/dmabuf_map.h"

#include <linux/dma-buf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

extern "C" {
#include <drm_fourcc.h>
}

namespace wl::encode {
namespace {

int SyncIoctl(int fd, uint64_t flags) {
  struct dma_buf_sync sync {};
  sync.flags = flags;
  int r;
  do {
    r = ioctl(fd, DMA_BUF_IOCTL_SYNC, &sync);
  } while (r < 0 && (errno == EINTR || errno == EAGAIN));
  return r < 0 ? errno : 0;
}

struct Mapping {
  void* addr = MAP_FAILED;
  size_t length = 0;
  int fd = -1;  // borrowed from `source` (the DmabufPlanes own it)
  bool synced = false;
  capture::FramePtr source;
  ~Mapping() {
    if (synced) SyncIoctl(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
    if (addr != MAP_FAILED) munmap(addr, length);
  }
};

}  // namespace

bool DmabufModifierIsLinear(uint64_t modifier) { return modifier == DRM_FORMAT_MOD_LINEAR; }

size_t DmabufObjectSize(int fd) {
  const off_t end = lseek(fd, 0, SEEK_END);
  if (end <= 0) return 0;
  lseek(fd, 0, SEEK_SET);
  return static_cast<size_t>(end);
}

capture::FramePtr MapLinearDmabuf(const capture::FramePtr& frame, std::string* error) {
  const capture::DmabufPlanes* p = frame->dmabuf.get();
  if (p == nullptr) {
    *error = "not a DMA-BUF frame";
    return nullptr;
  }
  if (!DmabufModifierIsLinear(p->modifier)) {
    *error = "DMA-BUF modifier 0x" + [](uint64_t m) {
      char b[24];
      snprintf(b, sizeof(b), "%llx", static_cast<unsigned long long>(m));
      return std::string(b);
    }(p->modifier) + " is not LINEAR: a CPU mapping would not be a plain picture";
    return nullptr;
  }
  if (p->n_planes != 1 || p->fds[0] < 0) {
    *error = "a LINEAR RGB DMA-BUF has one plane, this one has " + std::to_string(p->n_planes);
    return nullptr;
  }
  const uint32_t row = frame->width * 4;
  const uint64_t need = static_cast<uint64_t>(p->offsets[0]) + static_cast<uint64_t>(p->strides[0]) * (frame->height - 1) + row;
  const size_t size = DmabufObjectSize(p->fds[0]);
  if (p->strides[0] < row || size < need) {
    *error = "DMA-BUF plane too small: " + std::to_string(size) + " bytes for stride " + std::to_string(p->strides[0]) + " x " +
             std::to_string(frame->height) + " rows at offset " + std::to_string(p->offsets[0]);
    return nullptr;
  }
  auto m = std::make_shared<Mapping>();
  m->fd = p->fds[0];
  m->source = frame;
  m->length = size;
  m->addr = mmap(nullptr, size, PROT_READ, MAP_SHARED, p->fds[0], 0);
  if (m->addr == MAP_FAILED) {
    *error = std::string("mmap of the DMA-BUF failed: ") + std::strerror(errno);
    return nullptr;
  }
  // Makes the GPU's writes visible to the CPU. ENOTTY: the fd is not a DMA-BUF (a memfd in
  // dmabuf_test); nothing to synchronise then.
  const int e = SyncIoctl(m->fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ);
  if (e != 0 && e != ENOTTY) {
    *error = std::string("DMA_BUF_IOCTL_SYNC failed: ") + std::strerror(e);
    return nullptr;
  }
  m->synced = e == 0;
  auto view = std::make_shared<capture::Frame>();
  view->seq = frame->seq;
  view->width = frame->width;
  view->height = frame->height;
  view->stride = p->strides[0];
  view->spa_format = frame->spa_format;
  view->format_name = frame->format_name;
  view->pts_ns = frame->pts_ns;
  view->process_ns = frame->process_ns;
  view->publish_ns = frame->publish_ns;
  view->damage = frame->damage;
  view->damage_source = frame->damage_source;
  view->has_crop = frame->has_crop;
  view->crop = frame->crop;
  view->dmabuf = frame->dmabuf;
  view->mapped = static_cast<const uint8_t*>(m->addr) + p->offsets[0];
  view->mapped_size = size - p->offsets[0];
  view->mapping = std::move(m);
  return view;
}

}  // namespace wl::encode
