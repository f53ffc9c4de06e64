// Errors: thrown, rejected, a non-Response, caught ones, and crypto.
export default {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/throw":
        throw new Error("thrown on purpose");
      case "/reject":
        return Promise.reject(new TypeError("rejected on purpose"));
      case "/not-a-response":
        return "just a string";
      case "/caught":
        try {
          JSON.parse("{not json");
        } catch (e) {
          return new Response(`caught ${e.name}`, { status: 422 });
        }
        return new Response("?");
      case "/bad-status":
        try {
          new Response("x", { status: 99 });
        } catch (e) {
          return new Response(`refused ${e.name}`, { status: 400 });
        }
        return new Response("?");
      case "/used-body": {
        const r = new Response("once");
        await r.text();
        try {
          await r.text();
        } catch (e) {
          return new Response(`second read: ${e.name}`);
        }
        return new Response("?");
      }
      case "/crypto": {
        const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("tessera"));
        const hex = [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
        const r = crypto.getRandomValues(new Uint8Array(16));
        const uuid = crypto.randomUUID();
        return Response.json({ hex, len: r.length, uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(uuid) });
      }
      default:
        return new Response("no", { status: 404 });
    }
  },
};
