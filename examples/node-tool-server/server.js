'use strict';
// A ToolScore Mesh tool server in Node.js, written from proto/ alone.
//
//   node server.js --socket /tmp/node-tools.sock --hub unix:///path/to/run/toolscore.sock
//
// It serves toolscore.v1.ToolExecutorService (Execute and the optional
// ExecuteStream fast path) and grpc.health.v1 on a Unix socket, registers itself
// with the hub (ToolLibraryService.RegisterTool, admin token from
// TOOLSCORE_AUTH__ADMIN_TOKEN), registers again whenever the hub restarts, and
// deregisters and removes its socket on SIGTERM/SIGINT.

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation } = require('grpc-health-check');
const { ACTIONS, ToolFailure } = require('./actions');
const { toStruct, fromStruct } = require('./struct');

const PROTO_DIR = path.resolve(__dirname, '../../proto');
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true,
  includeDirs: [PROTO_DIR] };
const EXECUTOR_SERVICE = 'toolscore.v1.ToolExecutorService';

function log(...args) {
  console.error(new Date().toISOString().slice(11, 23), 'node-tool', ...args);
}

function options() {
  const { values } = parseArgs({
    options: {
      socket: { type: 'string', default: process.env.NODE_TOOL_SOCKET || '/tmp/toolscore-node-tools.sock' },
      hub: { type: 'string', default: process.env.NODE_TOOL_HUB
        || `unix://${path.resolve(__dirname, '../../run/toolscore.sock')}` },
      'tool-id': { type: 'string', default: process.env.NODE_TOOL_ID || 'node-text-tools' },
    },
  });
  return { socket: path.resolve(values.socket), hub: values.hub, toolId: values['tool-id'],
    adminToken: process.env.TOOLSCORE_AUTH__ADMIN_TOKEN || '' };
}

function loadProtos() {
  const files = ['toolscore/v1/executor.proto', 'toolscore/v1/tool_library.proto'];
  return grpc.loadPackageDefinition(protoLoader.loadSync(files, LOADER_OPTIONS)).toolscore.v1;
}

// -- serving calls --------------------------------------------------------

function result(value) {
  return { is_error: false, content: [{ text: { text: JSON.stringify(value) } }], structured: toStruct(value) };
}

function failure(type, message) {
  return { is_error: true, content: [{ text: { text: message } }], error: { type, message } };
}

function duration(startNs) {
  const ns = process.hrtime.bigint() - startNs;
  return { seconds: String(ns / 1000000000n), nanos: Number(ns % 1000000000n) };
}

// One call -> an ExecuteResponse; protocol faults (wrong tool, unknown action) throw a gRPC status.
function execute(toolId, request) {
  const start = process.hrtime.bigint();
  if (request.tool_id !== toolId) {
    throw { code: grpc.status.NOT_FOUND, details: `this server does not host tool ${JSON.stringify(request.tool_id)}` };
  }
  const action = Object.hasOwn(ACTIONS, request.action) ? ACTIONS[request.action] : undefined;
  if (!action) {
    throw { code: grpc.status.INVALID_ARGUMENT,
      details: `tool ${toolId} has no action ${JSON.stringify(request.action)} (actions: ${Object.keys(ACTIONS).join(', ')})` };
  }
  const args = fromStruct(request.arguments);
  let response;
  const missing = action.inputSchema.required.filter((k) => typeof args[k] !== 'string');
  if (missing.length) {
    response = failure('ERROR_TYPE_INVALID_INPUT', `expected string argument(s): ${missing.join(', ')}`);
  } else {
    try {
      response = result(action.run(args));
    } catch (err) {
      const type = err instanceof ToolFailure ? 'ERROR_TYPE_TOOL_ERROR' : 'ERROR_TYPE_UNKNOWN';
      response = failure(type, err.message);
    }
  }
  response.duration = duration(start);
  return response;
}

function executorService(toolId, streams) {
  return {
    Execute(call, callback) {
      try {
        callback(null, execute(toolId, call.request));
      } catch (status) {
        callback(status);
      }
    },
    // Many calls over one stream, matched by call_id. Every action finishes at
    // once, so a `cancel` always arrives after its result and needs no answer.
    ExecuteStream(call) {
      streams.add(call);
      call.on('close', () => streams.delete(call));
      call.on('data', (msg) => {
        if (msg.kind !== 'execute') return;
        let res;
        try {
          res = execute(toolId, msg.execute);
        } catch (status) {
          res = failure('ERROR_TYPE_INVALID_INPUT', status.details);
        }
        call.write({ call_id: msg.call_id, result: res });
      });
      call.on('end', () => call.end());
      call.on('error', () => {});
    },
  };
}

// -- the socket -----------------------------------------------------------

// grpc-js does not remove a stale socket file; remove it only if nobody answers on it.
function clearStaleSocket(socketPath) {
  return new Promise((resolve, reject) => {
    if (!fs.existsSync(socketPath)) return resolve();
    if (!fs.statSync(socketPath).isSocket()) return reject(new Error(`${socketPath} exists and is not a socket`));
    const probe = net.connect(socketPath);
    probe.once('connect', () => { probe.destroy(); reject(new Error(`${socketPath} is in use by a live server`)); });
    probe.once('error', () => { fs.rmSync(socketPath, { force: true }); resolve(); });
  });
}

function bind(server, socketPath) {
  return new Promise((resolve, reject) => {
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(),
      (err) => (err ? reject(err) : resolve()));
  });
}

// -- registration ---------------------------------------------------------

function toolDefinition(toolId, endpoint) {
  return {
    tool_id: toolId,
    name: 'Node text tools',
    description: 'Text utilities served by a Node.js tool server: reverse, word_count, parse_json.',
    kind: 'TOOL_KIND_GRPC_SERVER',
    endpoint,
    enabled: true,
    version: '0.1.0',
    tags: ['text', 'node', 'example'],
    owner: 'examples/node-tool-server',
    capabilities: Object.entries(ACTIONS).map(([name, a]) => ({
      name, description: a.description,
      input_schema: toStruct(a.inputSchema), output_schema: toStruct(a.outputSchema),
    })),
  };
}

class Registration {
  constructor(pkg, opts, endpoint) {
    this.client = new pkg.ToolLibraryService(opts.hub, grpc.credentials.createInsecure(),
      { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 2000 });
    this.tool = toolDefinition(opts.toolId, endpoint);
    this.metadata = new grpc.Metadata();
    if (opts.adminToken) this.metadata.set('authorization', `Bearer ${opts.adminToken}`);
    this.stopped = false;
    this.watch = null;
    this.delayMs = 100;
    this.timer = null;
  }

  deadline(seconds) {
    return new Date(Date.now() + seconds * 1000);
  }

  // Register, then hold a WatchToolEvents stream open: when it breaks, the hub
  // went away, so register again (with backoff) as soon as it is back.
  start() {
    if (this.stopped) return;
    this.client.RegisterTool({ tool: this.tool }, this.metadata, { deadline: this.deadline(5) }, (err, res) => {
      if (this.stopped) return;
      if (err) {
        const fatal = [grpc.status.UNAUTHENTICATED, grpc.status.INVALID_ARGUMENT, grpc.status.ALREADY_EXISTS];
        log(`${fatal.includes(err.code) ? 'hub refused registration' : 'hub not reachable'}: ${err.details || err.message}`);
        return this.retry();
      }
      log(`registered ${this.tool.tool_id} at ${this.tool.endpoint} with the hub ${this.client.getChannel().getTarget()}`);
      this.delayMs = 100;
      this.follow(res.revision);
    });
  }

  follow(revision) {
    const watch = this.client.WatchToolEvents({ since_revision: revision, tool_ids: [this.tool.tool_id] });
    this.watch = watch;
    const restart = () => {
      if (this.watch !== watch || this.stopped) return;
      this.watch = null;
      log('hub watch ended; registering again');
      this.retry();
    };
    watch.on('data', () => {});
    watch.on('error', restart);
    watch.on('end', restart);
  }

  retry() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.start(), this.delayMs);
    this.delayMs = Math.min(this.delayMs * 2, 5000);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.watch) this.watch.cancel();
    return new Promise((resolve) => {
      this.client.DeregisterTool({ tool_id: this.tool.tool_id }, this.metadata, { deadline: this.deadline(1) },
        (err) => {
          if (err && err.code !== grpc.status.NOT_FOUND) log(`deregistration failed: ${err.details || err.message}`);
          this.client.close();
          resolve();
        });
    });
  }
}

// -- lifecycle ------------------------------------------------------------

async function main() {
  const opts = options();
  const pkg = loadProtos();
  const server = new grpc.Server();
  const streams = new Set(); // open ExecuteStream calls, ended first on shutdown
  server.addService(pkg.ToolExecutorService.service, executorService(opts.toolId, streams));
  const health = new HealthImplementation({ '': 'SERVING', [EXECUTOR_SERVICE]: 'SERVING' });
  health.addToServer(server);

  await clearStaleSocket(opts.socket);
  await bind(server, opts.socket);
  const endpoint = `unix://${opts.socket}`;
  log(`serving ${EXECUTOR_SERVICE} (${Object.keys(ACTIONS).join(', ')}) on ${endpoint}`);

  const registration = new Registration(pkg, opts, endpoint);
  registration.start();

  let stopping = false;
  const shutdown = async (signal) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping`);
    health.setStatus('', 'NOT_SERVING');
    health.setStatus(EXECUTOR_SERVICE, 'NOT_SERVING');
    await registration.stop();
    const done = () => {
      fs.rmSync(opts.socket, { force: true });
      log('stopped');
      process.exit(0);
    };
    // Routers keep ExecuteStream open; ending it (status OK) lets them reconnect or fail fast.
    for (const call of streams) call.end();
    const force = setTimeout(() => { server.forceShutdown(); done(); }, 2000);
    server.tryShutdown(() => { clearTimeout(force); done(); });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((err) => {
  log(`fatal: ${err.message}`);
  process.exit(1);
});
