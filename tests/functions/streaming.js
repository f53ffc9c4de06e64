// Streamed bodies: a pulled ReadableStream, a TransformStream, text encoding.
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const enc = new TextEncoder();
    if (url.pathname === "/pull") {
      let i = 0;
      const body = new ReadableStream({
        pull(controller) {
          if (i < 5) controller.enqueue(enc.encode(`chunk ${i++}\n`));
          else controller.close();
        },
      });
      return new Response(body, { headers: { "content-type": "text/plain" } });
    }
    if (url.pathname === "/transform") {
      const { readable, writable } = new TransformStream({
        transform(chunk, controller) {
          controller.enqueue(enc.encode(new TextDecoder().decode(chunk).toUpperCase()));
        },
      });
      const writer = writable.getWriter();
      (async () => {
        for (const word of ["alpha ", "beta ", "gamma"]) await writer.write(enc.encode(word));
        await writer.close();
      })();
      return new Response(readable, { headers: { "content-type": "text/plain" } });
    }
    if (url.pathname === "/echo" && request.method === "POST") {
      // Read the request body as a stream, count its bytes and chunks' sum.
      const reader = request.body.getReader();
      let n = 0;
      let sum = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        n += value.length;
        for (const b of value) sum = (sum + b) % 65521;
      }
      return Response.json({ bytes: n, sum });
    }
    if (url.pathname === "/text") {
      const bytes = enc.encode("héllo wörld ✓");
      const back = new TextDecoder().decode(bytes);
      return Response.json({ len: bytes.length, back, b64: btoa("hello"), un: atob("aGVsbG8=") });
    }
    return new Response("no", { status: 404 });
  },
};
