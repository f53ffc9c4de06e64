export default {
  async fetch() {
    return new Response("Hello World\n");
  },
};
