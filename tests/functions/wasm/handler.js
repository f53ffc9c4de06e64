// A wasi-http component's source: componentize-js (npm) builds it, with
// the StarlingMonkey JavaScript engine inside, into a WebAssembly component
// that exports wasi:http/incoming-handler.
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  if (url.pathname === "/loop") {
    for (;;) {}
  }
  if (url.pathname === "/memory") {
    const hoard = [];
    for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
  }
  if (url.pathname === "/fetch") {
    // Outgoing requests: the first within the subrequest limit, a second past it.
    const target = url.searchParams.get("url");
    const first = await fetch(target);
    const text = await first.text();
    let again;
    try {
      again = (await fetch(target)).status;
    } catch (e) {
      again = "refused";
    }
    return new Response(`fetched ${first.status} ${text.trim()}; again: ${again}`);
  }
  if (url.pathname === "/echo") {
    const body = await request.text();
    return new Response(`echo ${request.method} ${body.length} ${body.toUpperCase()}`, { status: 201 });
  }
  return new Response(`Hello from WebAssembly at ${url.pathname}\n`, {
    headers: { "content-type": "text/plain", "x-engine": "wasm" },
  });
}
