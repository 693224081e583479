// PostGraphile 5 (Grafast) in production mode over the benchmark's PostgreSQL replica, as
// bench/postgraphile.py runs it: DATABASE_URL, PORT and SCHEMAS from the environment.
import { createServer } from "node:http";

import { postgraphile } from "postgraphile";
import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/node";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { PostGraphileConnectionFilterPreset } from "postgraphile-plugin-connection-filter";

const port = Number(process.env.PORT);
const preset = {
  extends: [PostGraphileAmberPreset, PostGraphileConnectionFilterPreset],
  pgServices: [
    makePgService({
      connectionString: process.env.DATABASE_URL,
      schemas: process.env.SCHEMAS.split(","),
    }),
  ],
  grafserv: { port, graphiql: false, watch: false },
  grafast: { explain: false },
};

const pgl = postgraphile(preset);
const serv = pgl.createServ(grafserv);
// Sequential requests over one keep-alive connection, idle while the other side is measured.
const server = createServer({ keepAliveTimeout: 600_000 });
server.once("listening", () => console.log(`ready on ${port}`));
await serv.addTo(server);
server.listen(port, "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, async () => {
    server.close();
    await pgl.release();
    process.exit(0);
  });
}
