// A KV namespace: put, get (text, json, arrayBuffer), metadata, list, delete.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const kv = env.STORE;
    switch (url.pathname) {
      case "/put":
        await kv.put("user:1", JSON.stringify({ name: "ada" }), { metadata: { role: "admin" } });
        await kv.put("user:2", "plain text");
        await kv.put("other", new Uint8Array([1, 2, 3]));
        return new Response("stored");
      case "/get": {
        const json = await kv.get("user:1", { type: "json" });
        const text = await kv.get("user:2");
        const buf = await kv.get("other", "arrayBuffer");
        const missing = await kv.get("nope");
        const meta = await kv.getWithMetadata("user:1");
        return Response.json({ json, text, bytes: [...new Uint8Array(buf)], missing, meta: meta.metadata });
      }
      case "/list": {
        const l = await kv.list({ prefix: "user:" });
        return Response.json({ names: l.keys.map((k) => k.name), complete: l.list_complete });
      }
      case "/delete":
        await kv.delete("user:2");
        return Response.json({ after: await kv.get("user:2") });
      default:
        return new Response("no", { status: 404 });
    }
  },
};
