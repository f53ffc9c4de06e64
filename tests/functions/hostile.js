// A script that tries everything a function must not get away with. Each
// path answers, or is stopped at a limit the node names.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/ok":
        return new Response("fine");
      case "/loop":
        for (;;) {}
      case "/memory": {
        const hoard = [];
        for (;;) hoard.push(new Uint8Array(4 << 20).fill(1));
      }
      case "/recurse": {
        const down = (n) => down(n + 1) + 1;
        return new Response(String(down(0)));
      }
      case "/sleep":
        await new Promise((resolve) => setTimeout(resolve, 600000));
        return new Response("woke");
      case "/hang":
        await new Promise(() => {});
        return new Response("never");
      case "/subrequests": {
        for (let i = 0; i < 20; i++) {
          try {
            await fetch(`http://127.0.0.1:1/${i}`);
          } catch (_) {
            // refused; keep trying
          }
        }
        return new Response("all twenty");
      }
      case "/escape": {
        const out = {};
        try {
          await import("fs");
          out.import = "imported";
        } catch (e) {
          out.import = "refused";
        }
        out.require = typeof require;
        out.process = typeof process;
        out.std = typeof globalThis.std;
        out.os = typeof globalThis.os;
        out.Deno = typeof Deno;
        out.eval_fs = (() => {
          try {
            return typeof eval("typeof scriptArgs");
          } catch (e) {
            return "refused";
          }
        })();
        try {
          await fetch(env.PRIVATE);
          out.fetch = "reached";
        } catch (e) {
          out.fetch = e.message;
        }
        try {
          await fetch("file:///etc/passwd");
          out.file = "read";
        } catch (e) {
          out.file = "refused";
        }
        return Response.json(out);
      }
      default:
        return new Response("no", { status: 404 });
    }
  },
};
