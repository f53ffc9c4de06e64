// The storage behind workerd's KV binding in the comparison test. workerd
// turns `env.STORE.get/put/delete/list` into HTTP requests to the service a
// kvNamespace binding names (in production, Cloudflare's KV; locally,
// wrangler's miniflare); this worker is that service, in memory, so the
// worker scripts themselves run unchanged on workerd and on Tessera.
const entries = new Map();
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const key = decodeURIComponent(url.pathname.slice(1));
    if (request.method === "PUT") {
      entries.set(key, { value: new Uint8Array(await request.arrayBuffer()), meta: request.headers.get("cf-kv-metadata") });
      return new Response(null);
    }
    if (request.method === "DELETE") {
      entries.delete(key);
      return new Response(null);
    }
    if (key === "") {
      const prefix = url.searchParams.get("prefix") || "";
      const keys = [...entries.keys()].filter((k) => k.startsWith(prefix)).sort().map((name) => {
        const meta = entries.get(name).meta;
        return meta ? { name, metadata: JSON.parse(meta) } : { name };
      });
      return Response.json({ keys, list_complete: true, cacheStatus: null });
    }
    const e = entries.get(key);
    if (!e) return new Response(null, { status: 404 });
    return new Response(e.value, { headers: e.meta ? { "cf-kv-metadata": e.meta } : {} });
  },
};
