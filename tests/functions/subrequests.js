// fetch() to another origin: GET, POST, a 404, headers passed both ways.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/get") {
      const r = await fetch(`${env.ORIGIN}/static/page?size=64`, { headers: { "x-from": "function" } });
      const text = await r.text();
      return new Response(`${r.status} ${r.ok} ${text.length} ${text.slice(0, 8)}`, {
        headers: { "x-origin-cc": r.headers.get("cache-control") || "none" },
      });
    }
    if (url.pathname === "/post") {
      const r = await fetch(`${env.ORIGIN}/anything`, { method: "POST", body: "payload-123" });
      return new Response(await r.text(), { status: r.status });
    }
    if (url.pathname === "/missing") {
      const r = await fetch(`${env.ORIGIN}/status/404`);
      return Response.json({ status: r.status, ok: r.ok });
    }
    if (url.pathname === "/many") {
      const rs = await Promise.all([1, 2, 3].map((i) => fetch(`${env.ORIGIN}/static/n${i}?size=10`).then((r) => r.text())));
      return new Response(rs.join("|"));
    }
    return new Response("no", { status: 404 });
  },
};
