// Server-side rendering behind a CDN zone (`origin = "fn:render"`): every
// render is a new page (its id), cached by the zone for 2 s and served stale
// for a minute while one regeneration runs; /revalidate asks for a path or a
// tag to be regenerated on demand.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/revalidate") {
      const path = url.searchParams.get("path");
      const tag = url.searchParams.get("tag");
      if (path) ctx.revalidate(path);
      if (tag) ctx.revalidateTag(tag);
      return new Response("revalidating\n", { headers: { "cache-control": "no-store" } });
    }
    if (url.pathname === "/same") {
      // Rendered again, the same bytes: 48 KiB that never change.
      return new Response("<p>the same page</p>\n".repeat(2400), {
        headers: { "content-type": "text/html", "cache-control": "public, s-maxage=1, stale-while-revalidate=60" },
      });
    }
    if (url.pathname === "/big") {
      // 256 KiB in which only the render id (36 bytes, in the middle)
      // changes: one 16 KiB chunk group of sixteen differs between renders.
      const fixed = "<p>a paragraph that does not change</p>\n";
      const half = fixed.repeat(Math.floor(128 * 1024 / fixed.length));
      return new Response(`${half}<p>render ${crypto.randomUUID()}</p>\n${half}`, {
        headers: { "content-type": "text/html", "cache-control": "public, s-maxage=1, stale-while-revalidate=60" },
      });
    }
    // A little work per render, so that concurrent misses overlap.
    let x = 0;
    for (let i = 0; i < 20000; i++) x = (x * 31 + i) % 1000003;
    const id = crypto.randomUUID();
    return new Response(`<h1>${url.pathname}</h1><p>render ${id} ${x}</p>`, {
      headers: {
        "content-type": "text/html; charset=utf-8",
        "cache-control": "public, s-maxage=2, stale-while-revalidate=60",
        "cache-tag": url.pathname.startsWith("/blog/") ? "blog" : "page",
      },
    });
  },
};
