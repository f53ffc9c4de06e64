// ctx.waitUntil: work that goes on after the response is sent.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/schedule") {
      ctx.waitUntil(
        (async () => {
          await new Promise((resolve) => setTimeout(resolve, 20));
          await env.STORE.put("later", "done after the response");
        })(),
      );
      return new Response("scheduled");
    }
    if (url.pathname === "/check") {
      return new Response((await env.STORE.get("later")) || "not yet");
    }
    return new Response("no", { status: 404 });
  },
};
