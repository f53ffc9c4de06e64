// Request and response headers, status codes, redirects, URL parsing.
export default {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/echo": {
        const mine = [...request.headers].filter(([k]) => k.startsWith("x-"));
        return Response.json({
          method: request.method,
          path: url.pathname,
          search: url.search,
          params: [...url.searchParams],
          headers: mine,
          accept: request.headers.get("accept"),
          has: request.headers.has("X-Test"),
        });
      }
      case "/set": {
        const h = new Headers({ "X-One": "1" });
        h.append("x-multi", "a");
        h.append("X-Multi", "b");
        h.set("x-two", "2");
        h.append("set-cookie", "a=1; Path=/");
        h.append("set-cookie", "b=2; Path=/");
        h.delete("x-gone");
        const listed = [...h].map(([k, v]) => `${k}=${v}`).join("\n");
        return new Response(listed, { status: 200, headers: h });
      }
      case "/status":
        return new Response("made", { status: Number(url.searchParams.get("code") || 200) });
      case "/redirect":
        return Response.redirect("https://example.com/elsewhere?x=1", 301);
      case "/empty":
        return new Response(null, { status: 204, headers: { "x-empty": "yes" } });
      case "/url": {
        const u = new URL("../b/c?d=1&e=two#frag", "https://user:pw@example.com:8443/a/x/y");
        u.searchParams.append("f", "a b");
        const p = new URLSearchParams("q=1&q=2&r=%20x+y");
        return Response.json({
          href: u.href, host: u.host, hostname: u.hostname, port: u.port, pathname: u.pathname,
          search: u.search, hash: u.hash, origin: u.origin, username: u.username,
          q: p.getAll("q"), r: p.get("r"), s: p.toString(),
          canParse: URL.canParse("not a url"),
        });
      }
      case "/method":
        return new Response(`${request.method} ${request.headers.get("content-type")} ${await request.text()}`);
      default:
        return new Response("not here", { status: 404, headers: { "content-type": "text/plain" } });
    }
  },
};
