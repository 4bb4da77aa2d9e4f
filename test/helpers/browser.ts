import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser, type BrowserContext } from "playwright-core";
import { NetLink } from "./netns.js";

export const CHROMIUM = process.env.WL_TEST_CHROMIUM ?? "/usr/lib/chromium/chromium";

export interface TestBrowserOptions {
  /** Extra Chromium flags. */
  args?: string[];
  /** The link whose namespace the browser runs in; default: a link of its own, closed with the browser. */
  link?: NetLink;
}

/**
 * A real headless Chromium as a viewer, inside a network namespace joined to this one by one veth pair
 * (`NetLink`), driven by playwright-core over a pipe.
 *
 * Why a namespace: Chromium gathers no loopback ICE candidates (not even with
 * --allow-loopback-in-peer-connection), so a viewer in this namespace would reach the agent over the
 * machine's own LAN address. Inside the namespace its only address is the link's, the namespace has no
 * route beyond the link, and an agent configured with `agentOverrides()` listens and gathers on the link's
 * other end only: every packet of a test stays on a link the test made.
 *
 * Flags from docs/notes: headless without GPU or sandbox (root), no mDNS host candidates (the agent cannot
 * resolve .local names), autoplay allowed.
 */
export class TestBrowser {
  readonly browser: Browser;
  readonly context: BrowserContext;
  readonly link: NetLink;
  readonly #ownLink: boolean;
  readonly #dir: string;
  #closed = false;

  private constructor(browser: Browser, context: BrowserContext, link: NetLink, ownLink: boolean, dir: string) {
    this.browser = browser;
    this.context = context;
    this.link = link;
    this.#ownLink = ownLink;
    this.#dir = dir;
  }

  /** The address an agent under test must listen on (and gather ICE candidates on) for this browser. */
  get agentHost(): string {
    return this.link.hostAddr;
  }

  /** Config overrides that put an agent's signaling and media on this browser's link. */
  agentOverrides(): { server: { host: string }; rtc: { ice_host_addresses: string[] } } {
    return { server: { host: this.agentHost }, rtc: { ice_host_addresses: [this.agentHost] } };
  }

  static async launch(opts: TestBrowserOptions = {}): Promise<TestBrowser> {
    const link = opts.link ?? (await NetLink.create());
    const dir = mkdtempSync(join(tmpdir(), "wl-chromium-"));
    const wrapper = join(dir, "chromium.sh");
    // ip netns exec execs Chromium in place: playwright's pid is Chromium's, and fds 3/4 (the pipe) survive.
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${link.ns} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    try {
      const browser = await chromium.launch({
        executablePath: wrapper,
        headless: true,
        timeout: 30_000,
        args: [
          "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
          "--disable-features=WebRtcHideLocalIpsWithMdns", ...(opts.args ?? []),
        ],
      });
      const context = await browser.newContext();
      return new TestBrowser(browser, context, link, opts.link === undefined, dir);
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      if (opts.link === undefined) await link.close();
      throw err;
    }
  }

  /** Idempotent: playwright closes Chromium (killing it by its pid if it does not exit); then its own link, which kills anything left inside. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.browser.close().catch(() => undefined);
    if (this.#ownLink) await this.link.close();
    rmSync(this.#dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
}
