// A TCP proxy in front of Herald that a test can cut, to make connections drop at exact
// moments (the server itself stays up).
import net from "node:net";

export async function proxy(target) {
  const conns = new Set();
  let dropAfterPublish = false;
  let dropped = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.hostname);
    const pair = { client, upstream };
    conns.add(pair);
    const end = () => {
      conns.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (d) => {
      upstream.write(d);
      // A publish reaches the server, and the connection dies before its ack comes back.
      if (dropAfterPublish && d.includes(0x81) && /"op":"publish"/.test(unmask(d))) {
        dropAfterPublish = false;
        dropped++;
        upstream.pause();
        setTimeout(end, 50);
      }
    });
    upstream.on("data", (d) => client.write(d));
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      for (const { client, upstream } of conns) {
        client.destroy();
        upstream.destroy();
      }
      conns.clear();
    },
    dropNextPublish() {
      dropAfterPublish = true;
    },
    /** How many publishes had their connection dropped before the ack. */
    get dropped() {
      return dropped;
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

/** The payload of a client's (masked) WebSocket text frame, best effort. */
function unmask(buf) {
  if (buf.length < 6 || (buf[0] & 0x0f) !== 1) return "";
  let len = buf[1] & 0x7f;
  let at = 2;
  if (len === 126) {
    len = buf.readUInt16BE(2);
    at = 4;
  } else if (len === 127) return "";
  const mask = buf.subarray(at, at + 4);
  const data = Buffer.from(buf.subarray(at + 4, at + 4 + len));
  for (let i = 0; i < data.length; i++) data[i] ^= mask[i % 4];
  return data.toString();
}
