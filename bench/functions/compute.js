// Compute-heavy: a few milliseconds of pure JavaScript per request (where
// V8's JIT is far ahead of an interpreter).
function fib(n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}
export default {
  async fetch() {
    return new Response(`fib(22) = ${fib(22)}\n`);
  },
};
