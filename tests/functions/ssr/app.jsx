/** @jsxImportSource hono/jsx */
// A server-rendered app with a real framework: Hono and its JSX, bundled
// for the Workers runtime with esbuild (see the README's recipe).
import { Hono } from "hono";

const posts = [
  { id: "1", title: "Edge rendering", body: "Rendered where the reader is." },
  { id: "2", title: "Regeneration", body: "Only what changed is rendered again." },
];

const Layout = (props) => (
  <html>
    <head>
      <title>{props.title}</title>
    </head>
    <body>{props.children}</body>
  </html>
);

const app = new Hono();

app.get("/", (c) =>
  c.html(
    <Layout title="Blog">
      <h1>Posts</h1>
      <ul>
        {posts.map((p) => (
          <li>
            <a href={`/posts/${p.id}`}>{p.title}</a>
          </li>
        ))}
      </ul>
    </Layout>,
  ),
);

app.get("/posts/:id", (c) => {
  const post = posts.find((p) => p.id === c.req.param("id"));
  if (!post) return c.text("no such post", 404);
  c.header("Cache-Control", "public, s-maxage=60, stale-while-revalidate=600");
  return c.html(
    <Layout title={post.title}>
      <article>
        <h1>{post.title}</h1>
        <p>{post.body}</p>
        <p>from: {c.req.query("ref") ?? "direct"} &amp; more</p>
      </article>
    </Layout>,
  );
});

app.get("/api/posts", (c) => c.json({ posts: posts.map(({ id, title }) => ({ id, title })) }));

app.post("/api/echo", async (c) => c.json({ got: await c.req.json() }, 201));

export default app;
