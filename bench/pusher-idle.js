// Opens N Pusher-protocol connections to a Herald, each subscribed to its own channel, and
// reports the server's RSS per connection once all are subscribed (`herald bench idle` for
// the Pusher endpoint). Loopback only.
//
//   (cd bench/peers/node-ws && npm install)
//   herald serve --config with-a-pusher-app.toml & node bench/pusher-idle.js PORT N PID [KEY]
const fs = require('fs');
const W = require('./peers/node-ws/node_modules/ws');
const [port, n, pid, key = 'app-key'] = process.argv.slice(2);
const rss = () => +/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1];
const before = rss();
let open = 0;
for (let i = 0; i < +n; i++) {
  // Spread over three source addresses so a large N does not run out of ports.
  const ws = new W(`ws://127.0.0.1:${port}/app/${key}?protocol=7`, {
    localAddress: `127.0.0.${2 + (i % 3)}`,
  });
  ws.on('error', (e) => {
    console.error(`connection ${i}: ${e.message}`);
    process.exit(1);
  });
  ws.on('message', (m) => {
    const e = JSON.parse(String(m));
    if (e.event === 'pusher:connection_established') {
      ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: `c${i}` } }));
    } else if (e.event === 'pusher_internal:subscription_succeeded' && ++open === +n) {
      setTimeout(() => {
        const after = rss();
        console.log(`pusher idle: ${n} subscribed; server RSS ${before} -> ${after} KiB = ` +
          `${((after - before) / n).toFixed(2)} KiB per connection`);
        process.exit(0);
      }, 2000);
    }
  });
}
setTimeout(() => {
  console.error(`only ${open} of ${n} subscribed`);
  process.exit(1);
}, 30000);
