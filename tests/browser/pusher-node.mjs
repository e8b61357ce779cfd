// The Pusher protocol through the real, unmodified clients from npm: pusher-js (Node build)
// against Herald's /app/{key}, and the `pusher` server SDK against /apps/{id}/...
// Driven by tests/e2e/pusher.rs. Arguments: a JSON object {servers:[{host,port}], app:{id,
// key,secret}, hook:"http://..."?}. Clients connect to the servers in turn (a cluster when
// there are several). Prints `OK <scenario>` per scenario and `ERROR <what>` on failure
// (exit 1); `DONE` at the end.
import PusherClient from "pusher-js";
import PusherServer from "pusher";

const cfg = JSON.parse(process.argv[2]);
const { app } = cfg;
const servers = cfg.servers;
let turn = 0;
const WAIT = 15000;
const clients = [];

const sdk = (i = 0) =>
  new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: servers[i % servers.length].host,
    port: String(servers[i % servers.length].port),
    useTLS: false,
    encryptionMasterKeyBase64: Buffer.alloc(32, 7).toString("base64"),
  });
const server = sdk();

function client(user, secret = app.secret) {
  const s = servers[turn++ % servers.length];
  const signer = new PusherServer({ appId: app.id, key: app.key, secret, host: s.host, port: String(s.port), useTLS: false,
    encryptionMasterKeyBase64: Buffer.alloc(32, 7).toString("base64") });
  const c = new PusherClient(app.key, {
    cluster: "local",
    wsHost: s.host,
    wsPort: s.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith("presence-")
          ? { user_id: user, user_info: { name: "User " + user } }
          : undefined;
        try {
          callback(null, signer.authorizeChannel(socketId, channelName, presence));
        } catch (e) {
          callback(e, null);
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        callback(null, signer.authenticateUser(socketId, { id: user, name: user }));
      },
    },
  });
  clients.push(c);
  return c;
}

const connected = (c) =>
  new Promise((resolve, reject) => {
    if (c.connection.state === "connected") return resolve();
    c.connection.bind("connected", resolve);
    setTimeout(() => reject(new Error("not connected: " + c.connection.state)), WAIT);
  });

function subscribe(c, name) {
  return new Promise((resolve, reject) => {
    const ch = c.subscribe(name);
    ch.bind("pusher:subscription_succeeded", (data) => resolve([ch, data]));
    ch.bind("pusher:subscription_error", (e) => reject(new Error("subscription_error " + JSON.stringify(e))));
    setTimeout(() => reject(new Error("no subscription reply for " + name)), WAIT);
  });
}

function next(ch, event, ms = WAIT) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no " + event + " on " + ch.name)), ms);
    ch.bind(event, function handler(data, meta) {
      clearTimeout(t);
      ch.unbind(event, handler);
      resolve([data, meta]);
    });
  });
}

function assert(cond, what) {
  if (!cond) throw new Error(what);
}

const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const scenarios = {
  async public_and_socket_exclusion() {
    const a = client("a"), b = client("b");
    await Promise.all([connected(a), connected(b)]);
    const [cha] = await subscribe(a, "news;sports=1,x");
    const [chb] = await subscribe(b, "news;sports=1,x");
    const got = next(chb, "goal");
    let aGot = false;
    cha.bind("goal", () => (aGot = true));
    await server.trigger("news;sports=1,x", "goal", { score: "1-0" }, { socket_id: a.connection.socket_id });
    const [data] = await got;
    assert(eq(data, { score: "1-0" }), "payload " + JSON.stringify(data));
    // A marker event both get: by then the excluded one would have arrived too.
    const marks = Promise.all([next(cha, "mark"), next(chb, "mark")]);
    await server.trigger("news;sports=1,x", "mark", "plain text");
    const [[ma]] = await marks;
    assert(ma === "plain text", "string data " + JSON.stringify(ma));
    assert(!aGot, "the excluded socket got its own event");
  },

  async private_auth_and_forgery() {
    const good = client("g"), forged = client("f", "not-the-secret");
    await Promise.all([connected(good), connected(forged)]);
    const [ch] = await subscribe(good, "private-orders");
    let leaked = false;
    const bad = forged.subscribe("private-orders");
    bad.bind("secret", () => (leaked = true));
    const error = await next(bad, "pusher:subscription_error");
    assert(error[0].status === 401 || error[0].type === "AuthError", "error " + JSON.stringify(error[0]));
    // A marker the forged socket does get, triggered after the secret: once it is in, the
    // secret would have been too had the refused subscription been kept.
    const [mark] = await subscribe(forged, "after-the-secret");
    const got = next(ch, "secret");
    const marked = next(mark, "mark");
    await server.trigger("private-orders", "secret", { n: 1 });
    await server.trigger("after-the-secret", "mark", {});
    await Promise.all([got, marked]);
    assert(!leaked, "a forged subscription received an event");
    assert(forged.connection.state === "connected", "the connection survives a refused subscription");
  },

  async presence_members() {
    const a = client("alice"), b = client("bob");
    await Promise.all([connected(a), connected(b)]);
    const [cha] = await subscribe(a, "presence-room");
    assert(cha.members.count === 1 && cha.members.me.id === "alice", "me " + JSON.stringify(cha.members.me));
    const added = next(cha, "pusher:member_added");
    const [chb] = await subscribe(b, "presence-room");
    assert(chb.members.count === 2, "bob sees " + chb.members.count);
    const [member] = await added;
    assert(member.id === "bob" && member.info.name === "User bob", "added " + JSON.stringify(member));
    const users = await (await server.get({ path: "/channels/presence-room/users" })).json();
    assert(eq(users.users.map((u) => u.id).sort(), ["alice", "bob"]), "users " + JSON.stringify(users));
    const list = await (await server.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } })).json();
    assert(list.channels["presence-room"].user_count === 2, "channels " + JSON.stringify(list));
    const one = await (await server.get({ path: "/channels/presence-room", params: { info: "user_count,subscription_count" } })).json();
    assert(one.occupied === true && one.user_count === 2 && one.subscription_count === 2, "channel " + JSON.stringify(one));
    const removed = next(cha, "pusher:member_removed");
    b.unsubscribe("presence-room");
    const [gone] = await removed;
    assert(gone.id === "bob", "removed " + JSON.stringify(gone));
  },

  async client_events() {
    const a = client("ca"), b = client("cb");
    await Promise.all([connected(a), connected(b)]);
    const [cha] = await subscribe(a, "presence-chat");
    const [chb] = await subscribe(b, "presence-chat");
    let echoed = false;
    cha.bind("client-typing", () => (echoed = true));
    const got = next(chb, "client-typing");
    assert(cha.trigger("client-typing", { on: true }), "trigger refused by pusher-js");
    const [data, meta] = await got;
    assert(eq(data, { on: true }), "client event " + JSON.stringify(data));
    assert(meta && meta.user_id === "ca", "user_id " + JSON.stringify(meta));
    // A marker on the same channel from the other side: it comes after an echo would have.
    const marked = next(cha, "client-mark");
    assert(chb.trigger("client-mark", {}), "trigger refused by pusher-js");
    await marked;
    assert(!echoed, "a client event came back to its sender");
  },

  async encrypted_channel() {
    const a = client("e");
    await connected(a);
    const [ch] = await subscribe(a, "private-encrypted-vault");
    const got = next(ch, "sealed");
    await server.trigger("private-encrypted-vault", "sealed", { gold: 3 });
    const [data] = await got;
    assert(eq(data, { gold: 3 }), "decrypted " + JSON.stringify(data));
  },

  async cache_channels() {
    await server.trigger("cache-weather", "forecast", { sky: "clear" });
    const a = client("k");
    await connected(a);
    const ch = a.subscribe("cache-weather");
    const [data] = await next(ch, "forecast");
    assert(eq(data, { sky: "clear" }), "cached " + JSON.stringify(data));
    const miss = a.subscribe("cache-nothing-yet");
    await next(miss, "pusher:cache_miss");
  },

  async batch_trigger() {
    const a = client("bt");
    await connected(a);
    const [ch] = await subscribe(a, "batch-room");
    const got = Promise.all([next(ch, "one"), next(ch, "two")]);
    await server.triggerBatch([
      { channel: "batch-room", name: "one", data: { i: 1 } },
      { channel: "batch-room", name: "two", data: { i: 2 } },
    ]);
    const [[d1], [d2]] = await got;
    assert(d1.i === 1 && d2.i === 2, "batch");
  },

  async signin_and_terminate() {
    const a = client("term-user");
    await connected(a);
    a.signin();
    await new Promise((resolve, reject) => {
      a.user.signinDonePromise.then(resolve, reject);
      setTimeout(() => reject(new Error("no signin")), WAIT);
    });
    const closed = new Promise((resolve) => a.connection.bind("state_change", (s) => s.current !== "connected" && resolve()));
    await server.terminateUserConnections("term-user");
    await closed;
  },

  async forged_api_requests() {
    const wrong = new PusherServer({ appId: app.id, key: app.key, secret: "wrong", host: servers[0].host, port: String(servers[0].port), useTLS: false });
    try {
      await wrong.trigger("news", "x", {});
      throw new Error("a wrongly signed trigger was accepted");
    } catch (e) {
      assert(e.status === 401, "status " + e.status + " " + e.message);
      assert(/signature/i.test(e.body), "body " + e.body);
    }
  },
};

const only = cfg.only ? new Set(cfg.only) : null;
let failed = false;
for (const [name, run] of Object.entries(scenarios)) {
  if (only && !only.has(name)) continue;
  try {
    await run();
    console.log("OK " + name);
  } catch (e) {
    failed = true;
    console.log("ERROR " + name + ": " + (e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : e));
  }
}
for (const c of clients) c.disconnect();
console.log("DONE");
process.exit(failed ? 1 : 0);
