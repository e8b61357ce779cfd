// Checks Pusher-format webhooks with the `pusher` SDK's own validator. Reads a JSON array of
// {headers, body} from stdin; prints each request's events as JSON lines, or ERROR.
import Pusher from "pusher";

const [key, secret] = process.argv.slice(2);
const pusher = new Pusher({ appId: "x", key, secret });
let input = "";
for await (const chunk of process.stdin) input += chunk;
let bad = false;
for (const r of JSON.parse(input)) {
  const hook = pusher.webhook({ headers: r.headers, rawBody: r.body });
  if (!hook.isValid()) {
    console.log("ERROR invalid webhook " + JSON.stringify(r));
    bad = true;
    continue;
  }
  console.log(JSON.stringify({ time: hook.getTime().getTime(), events: hook.getEvents() }));
}
process.exit(bad ? 1 : 0);
