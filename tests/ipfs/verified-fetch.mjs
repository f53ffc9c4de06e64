// @helia/verified-fetch, with the node under test as its only gateway and
// router: fetches each ipfs:// URL given, verifying every block itself, and
// prints one JSON line per URL (status, content type, length, sha-256).
//
//   node verified-fetch.mjs GATEWAY URL...
import { createHash } from 'node:crypto'
import { createVerifiedFetch } from '@helia/verified-fetch'

const [gateway, ...urls] = process.argv.slice(2)
const verifiedFetch = await createVerifiedFetch({
  gateways: [gateway],
  routers: [gateway],
  // The node is on loopback over plain HTTP.
  allowInsecure: true,
  allowLocal: true
})
for (const url of urls) {
  const res = await verifiedFetch(url)
  const body = new Uint8Array(await res.arrayBuffer())
  console.log(JSON.stringify({
    url,
    status: res.status,
    type: res.headers.get('content-type'),
    len: body.length,
    sha256: createHash('sha256').update(body).digest('hex')
  }))
}
await verifiedFetch.stop()
