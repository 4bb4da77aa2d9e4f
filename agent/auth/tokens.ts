import { randomBytes, createPublicKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { SignJWT, jwtVerify, decodeProtectedHeader, errors as joseErrors, type JWTPayload } from "jose";
import type { AuthConfig } from "../config/schema.js";
import { RevocationList } from "./revocation.js";
import { WlError } from "../util/errors.js";

export type Role = "view" | "control";
export const ROLES: readonly Role[] = ["view", "control"];

/** Why a token was refused. Stable strings: they appear in close reasons, logs and metrics labels. */
export type AuthFailure =
  | "missing"
  | "malformed"
  | "expired"
  | "not-yet-valid"
  | "bad-signature"
  | "bad-algorithm"
  | "wrong-audience"
  | "revoked"
  | "bad-claims"
  | "ttl-too-long";

export const AUTH_FAILURES: readonly AuthFailure[] = [
  "missing", "malformed", "expired", "not-yet-valid", "bad-signature", "bad-algorithm",
  "wrong-audience", "revoked", "bad-claims", "ttl-too-long",
];

export interface TokenClaims {
  sub: string;
  role: Role;
  exp: number;
  iat: number | undefined;
  jti: string;
  aud: string;
}

export type VerifyResult = { ok: true; claims: TokenClaims } | { ok: false; reason: AuthFailure; detail: string };

export interface MintOptions {
  role: Role;
  ttlS: number;
  subject: string;
}

/**
 * Mints and verifies the agent's JWTs: HS256 with the agent's own secret, and optionally EdDSA
 * (Ed25519) tokens from configured public keys. `alg: none` and every other algorithm are refused.
 */
export class TokenService {
  readonly #secret: Uint8Array;
  readonly #publicKeys: KeyObject[];
  readonly #config: AuthConfig;
  readonly #revoked: RevocationList;

  constructor(secret: Uint8Array, config: AuthConfig, publicKeys: KeyObject[] = []) {
    this.#secret = secret;
    this.#config = config;
    this.#publicKeys = publicKeys;
    this.#revoked = new RevocationList(config.revocation_file);
  }

  static loadPublicKeys(files: readonly string[]): KeyObject[] {
    return files.map((f) => {
      let key: KeyObject;
      try {
        key = createPublicKey(readFileSync(f));
      } catch (err) {
        throw new WlError("config", `auth.public_keys: ${f}: not a readable public key (${(err as Error).message})`);
      }
      if (key.asymmetricKeyType !== "ed25519")
        throw new WlError("config", `auth.public_keys: ${f}: expected an Ed25519 key, found ${key.asymmetricKeyType ?? "unknown"}`);
      return key;
    });
  }

  get revocations(): RevocationList {
    return this.#revoked;
  }

  /** Allowed clock difference (auth.clock_tolerance_s): a token is good until exp plus this. */
  get clockToleranceS(): number {
    return this.#config.clock_tolerance_s;
  }

  async mint(opts: MintOptions): Promise<{ token: string; claims: TokenClaims }> {
    if (!ROLES.includes(opts.role)) throw new TypeError(`role: expected view or control, found ${JSON.stringify(opts.role)}`);
    if (!Number.isInteger(opts.ttlS) || opts.ttlS < 1 || opts.ttlS > this.#config.max_ttl_s)
      throw new RangeError(`ttl: expected 1..${this.#config.max_ttl_s} seconds (auth.max_ttl_s), found ${opts.ttlS}`);
    if (opts.subject === "" || opts.subject.length > 256) throw new TypeError("subject: expected 1..256 characters");
    const iat = Math.floor(Date.now() / 1000);
    const claims: TokenClaims = {
      sub: opts.subject,
      role: opts.role,
      iat,
      exp: iat + opts.ttlS,
      jti: randomBytes(12).toString("base64url"),
      aud: this.#config.audience,
    };
    const token = await new SignJWT({ role: claims.role })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .setSubject(claims.sub)
      .setAudience(claims.aud)
      .setIssuedAt(iat)
      .setExpirationTime(claims.exp)
      .setJti(claims.jti)
      .sign(this.#secret);
    return { token, claims };
  }

  async verify(token: string | undefined): Promise<VerifyResult> {
    if (token === undefined || token === "") return fail("missing", "no token was given");
    if (token.length > 8192 || !/^[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$/.test(token))
      return fail("malformed", "not a compact JWS");
    let alg: string | undefined;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      return fail("malformed", "the header does not decode");
    }
    let payload: JWTPayload;
    try {
      if (alg === "HS256") {
        payload = (await jwtVerify(token, this.#secret, this.#options(["HS256"]))).payload;
      } else if (alg === "EdDSA" || alg === "Ed25519") {
        payload = await this.#verifyEd(token);
      } else {
        return fail("bad-algorithm", `algorithm ${JSON.stringify(alg ?? null)} is not accepted`);
      }
    } catch (err) {
      return mapJoseError(err);
    }
    const role = payload.role;
    if (role !== "view" && role !== "control") return fail("bad-claims", "role must be view or control");
    if (typeof payload.sub !== "string" || payload.sub === "") return fail("bad-claims", "sub is required");
    if (typeof payload.jti !== "string" || payload.jti === "") return fail("bad-claims", "jti is required");
    if (typeof payload.exp !== "number") return fail("bad-claims", "exp is required");
    const now = Date.now() / 1000;
    if (payload.exp - now > this.#config.max_ttl_s + this.#config.clock_tolerance_s)
      return fail("ttl-too-long", `expires more than auth.max_ttl_s (${this.#config.max_ttl_s} s) from now`);
    if (typeof payload.iat === "number" && payload.iat > now + this.#config.clock_tolerance_s)
      return fail("not-yet-valid", "issued in the future");
    if (this.#revoked.has(payload.jti)) return fail("revoked", "this token id was revoked");
    return {
      ok: true,
      claims: { sub: payload.sub, role, exp: payload.exp, iat: payload.iat, jti: payload.jti, aud: this.#config.audience },
    };
  }

  async #verifyEd(token: string): Promise<JWTPayload> {
    if (this.#publicKeys.length === 0) throw new joseErrors.JOSEAlgNotAllowed("no EdDSA public keys are configured");
    let last: unknown;
    for (const key of this.#publicKeys) {
      try {
        return (await jwtVerify(token, key, this.#options(["EdDSA", "Ed25519"]))).payload;
      } catch (err) {
        last = err;
        // Only a signature mismatch means "try the next key"; any claim error is final.
        if (!(err instanceof joseErrors.JWSSignatureVerificationFailed)) throw err;
      }
    }
    throw last;
  }

  #options(algorithms: string[]) {
    return {
      algorithms,
      audience: this.#config.audience,
      clockTolerance: this.#config.clock_tolerance_s,
      requiredClaims: ["exp", "sub", "jti", "aud"],
    };
  }
}

function fail(reason: AuthFailure, detail: string): VerifyResult {
  return { ok: false, reason, detail };
}

function mapJoseError(err: unknown): VerifyResult {
  if (err instanceof joseErrors.JWTExpired) return fail("expired", "the token has expired");
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === "nbf") return fail("not-yet-valid", "the token is not valid yet");
    if (err.claim === "aud") return fail("wrong-audience", "the token is for another audience");
    if (err.claim === "iat") return fail("not-yet-valid", "issued in the future");
    return fail("bad-claims", `claim ${err.claim}: ${err.reason}`);
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return fail("bad-signature", "the signature does not verify");
  if (err instanceof joseErrors.JOSEAlgNotAllowed || err instanceof joseErrors.JOSENotSupported)
    return fail("bad-algorithm", "the algorithm is not accepted");
  if (err instanceof joseErrors.JWTInvalid || err instanceof joseErrors.JWSInvalid) return fail("malformed", "the token does not decode");
  return fail("malformed", "the token does not decode");
}

/** Parses a TTL: seconds, or a number with s/m/h/d. */
export function parseTtl(text: string): number {
  const m = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  if (!m) throw new TypeError(`ttl: expected seconds or a number with s/m/h/d (e.g. 60, 10m, 2h), found ${JSON.stringify(text)}`);
  const mult = { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "" | "s" | "m" | "h" | "d"];
  return Number(m[1]) * mult;
}
