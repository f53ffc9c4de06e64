// Bindings: a var and a secret, as the script's env sees them.
export default {
  async fetch(request, env) {
    return Response.json({ greeting: env.GREETING ?? null, key: env.API_KEY ?? null });
  },
};
