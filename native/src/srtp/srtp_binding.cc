// SrtpGcmSealer: SRTP AEAD_AES_128_GCM (RFC 7714) encryption of outgoing RTP packets with the session
// key set up once. werift makes a fresh node:crypto cipher for every packet (createCipheriv, setAAD,
// update, final, getAuthTag, Buffer.concat: ~7 us and five objects for the GC at 1.2 KB); here each
// packet is one call that only sets the IV on a kept OpenSSL context and writes header || ciphertext ||
// tag into one new buffer. OpenSSL is Node's own (its symbols are exported to addons; the headers come
// with Node's), so the result is what werift's node:crypto path computes, byte for byte (tested).
// Used by agent/rtc/srtp.ts, which validates the arguments; the checks here only keep a wrong call from
// reading past a buffer.
#include "srtp/srtp_binding.h"

#include <openssl/evp.h>

#include <cstring>

namespace wl::srtp {
namespace {

constexpr size_t kKeyLen = 16;   // AES-128
constexpr size_t kSaltLen = 12;  // RFC 7714 section 8.1: 96-bit session salt
constexpr size_t kTagLen = 16;

class SealerWrap final : public Napi::ObjectWrap<SealerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SrtpGcmSealer",
                       {
                           InstanceMethod<&SealerWrap::Seal>("seal"),
                           InstanceMethod<&SealerWrap::SealInto>("sealInto"),
                           InstanceMethod<&SealerWrap::Close>("close"),
                           InstanceAccessor<&SealerWrap::Closed>("closed"),
                       });
  }

  // new SrtpGcmSealer(sessionKey: 16 bytes, sessionSalt: 12 bytes)
  explicit SealerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SealerWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsBuffer())
      throw Napi::TypeError::New(env, "SrtpGcmSealer(sessionKey, sessionSalt): two Buffers");
    auto key = info[0].As<Napi::Buffer<uint8_t>>();
    auto salt = info[1].As<Napi::Buffer<uint8_t>>();
    if (key.Length() != kKeyLen || salt.Length() != kSaltLen)
      throw Napi::RangeError::New(env, "SrtpGcmSealer: the session key must be 16 bytes and the salt 12 (AEAD_AES_128_GCM)");
    std::memcpy(salt_, salt.Data(), kSaltLen);
    ctx_ = EVP_CIPHER_CTX_new();
    if (ctx_ == nullptr || EVP_EncryptInit_ex(ctx_, EVP_aes_128_gcm(), nullptr, nullptr, nullptr) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_SET_IVLEN, 12, nullptr) != 1 ||
        EVP_EncryptInit_ex(ctx_, nullptr, nullptr, key.Data(), nullptr) != 1) {
      Free();
      throw Napi::Error::New(env, "SrtpGcmSealer: OpenSSL could not set up AES-128-GCM");
    }
  }
  ~SealerWrap() override { Free(); }

 private:
  // seal(header, payload, ssrc, rolloverCounter, sequenceNumber): header || AES-GCM(payload) || tag, the
  // serialized header as additional authenticated data, in a new buffer.
  Napi::Value Seal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsBuffer() || !info[1].IsBuffer())
      throw Napi::TypeError::New(env, "seal(header, payload, ssrc, rolloverCounter, sequenceNumber)");
    auto hdr = info[0].As<Napi::Buffer<uint8_t>>();
    auto payload = info[1].As<Napi::Buffer<uint8_t>>();
    auto out = Napi::Buffer<uint8_t>::New(env, hdr.Length() + payload.Length() + kTagLen);
    SealTo(env, out.Data(), hdr, payload, info[2], info[3], info[4]);
    return out;
  }
  // sealInto(out, header, payload, ssrc, rolloverCounter, sequenceNumber): the same into `out` (exactly
  // header + payload + 16 bytes): JS hands a pooled Buffer.allocUnsafe slice, cheaper than a buffer made here.
  Napi::Value SealInto(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 6 || !info[0].IsBuffer() || !info[1].IsBuffer() || !info[2].IsBuffer())
      throw Napi::TypeError::New(env, "sealInto(out, header, payload, ssrc, rolloverCounter, sequenceNumber)");
    auto out = info[0].As<Napi::Buffer<uint8_t>>();
    auto hdr = info[1].As<Napi::Buffer<uint8_t>>();
    auto payload = info[2].As<Napi::Buffer<uint8_t>>();
    if (out.Length() != hdr.Length() + payload.Length() + kTagLen)
      throw Napi::RangeError::New(env, "sealInto: out must be header + payload + 16 bytes long");
    SealTo(env, out.Data(), hdr, payload, info[3], info[4], info[5]);
    return env.Undefined();
  }
  void SealTo(Napi::Env env, uint8_t* o, const Napi::Buffer<uint8_t>& hdr, const Napi::Buffer<uint8_t>& payload,
              const Napi::Value& ssrc_v, const Napi::Value& roc_v, const Napi::Value& seq_v) {
    if (ctx_ == nullptr) throw Napi::Error::New(env, "SrtpGcmSealer: closed");
    const uint32_t ssrc = ssrc_v.As<Napi::Number>().Uint32Value();
    const uint32_t roc = roc_v.As<Napi::Number>().Uint32Value();
    const uint32_t seq = seq_v.As<Napi::Number>().Uint32Value();
    // IV (RFC 7714 section 8.1): 00 00 || SSRC || ROC || SEQ, XOR the session salt.
    uint8_t iv[kSaltLen] = {0, 0,
                            static_cast<uint8_t>(ssrc >> 24), static_cast<uint8_t>(ssrc >> 16), static_cast<uint8_t>(ssrc >> 8), static_cast<uint8_t>(ssrc),
                            static_cast<uint8_t>(roc >> 24), static_cast<uint8_t>(roc >> 16), static_cast<uint8_t>(roc >> 8), static_cast<uint8_t>(roc),
                            static_cast<uint8_t>(seq >> 8), static_cast<uint8_t>(seq)};
    for (size_t i = 0; i < kSaltLen; ++i) iv[i] ^= salt_[i];
    const size_t hlen = hdr.Length(), plen = payload.Length();
    std::memmove(o, hdr.Data(), hlen);
    int n = 0, fin = 0;
    // The key schedule stays; only the IV (and GCM's per-message state) is reset.
    if (EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv) != 1 ||
        (hlen > 0 && EVP_EncryptUpdate(ctx_, nullptr, &n, hdr.Data(), static_cast<int>(hlen)) != 1) ||
        (plen > 0 && EVP_EncryptUpdate(ctx_, o + hlen, &n, payload.Data(), static_cast<int>(plen)) != 1) ||
        EVP_EncryptFinal_ex(ctx_, o + hlen + (plen > 0 ? n : 0), &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagLen), o + hlen + plen) != 1)
      throw Napi::Error::New(env, "SrtpGcmSealer: AES-GCM encryption failed");
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Free();
    return info.Env().Undefined();
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), ctx_ == nullptr); }
  void Free() {
    if (ctx_ != nullptr) EVP_CIPHER_CTX_free(ctx_);
    ctx_ = nullptr;
    std::memset(salt_, 0, sizeof salt_);
  }

  EVP_CIPHER_CTX* ctx_ = nullptr;
  uint8_t salt_[kSaltLen] = {};
};

}  // namespace

void InitBinding(Napi::Env env, Napi::Object exports) { exports.Set("SrtpGcmSealer", SealerWrap::Define(env)); }

}  // namespace wl::srtp
