// The real WatermelonDB client (0.28, LokiJS adapter in memory) against the local gateway.
// Usage: node sync_scenarios.mjs <region base url> <editor access token>
// Prints one JSON object: what each scenario saw, and every sync error WatermelonDB logged.
import { createRequire } from 'node:module'
import { randomUUID } from 'node:crypto'

const require = createRequire(import.meta.url)
const { Database, Model, appSchema, tableSchema } = require('@nozbe/watermelondb')
const LokiJSAdapter = require('@nozbe/watermelondb/adapters/lokijs').default
const { synchronize } = require('@nozbe/watermelondb/sync')
const { setGenerator } = require('@nozbe/watermelondb/utils/common/randomId')
const { LokiMemoryAdapter } = require('lokijs')

const [base, token] = process.argv.slice(2)
const logged = []
for (const level of ['error', 'warn']) {
  console[level] = (...args) => logged.push(args.map(String).join(' '))
}
for (const level of ['log', 'info', 'debug']) {
  console[level] = (...args) => process.stderr.write(`${args.map(String).join(' ')}\n`)
}
setGenerator(() => randomUUID()) // lower-case UUIDs, as the server requires

const column = (name, type, extra = {}) => ({ name, type, ...extra })
const schema = appSchema({
  version: 1,
  tables: [
    tableSchema({
      name: 'countries',
      columns: [
        column('iso2', 'string'), column('name', 'string'), column('continent', 'string'),
        column('region', 'string'), column('gdp_usd', 'number'),
        column('contribution_usd', 'number'), column('covenant_status', 'string'),
        column('joined_at', 'number', { isOptional: true }), column('version', 'number'),
        column('created_at', 'number'), column('updated_at', 'number'),
      ],
    }),
    tableSchema({
      name: 'projects',
      columns: [
        column('name', 'string'), column('description', 'string'),
        column('sector_id', 'string'), column('country_code', 'string'),
        column('region', 'string'), column('status', 'string'),
        column('budget_usd', 'number'), column('impact_score', 'number'),
        column('progress', 'number'), column('version', 'number'),
        column('created_at', 'number'), column('updated_at', 'number'),
      ],
    }),
    tableSchema({
      name: 'sectors',
      columns: [
        column('name', 'string'), column('description', 'string'), column('version', 'number'),
        column('created_at', 'number'), column('updated_at', 'number'),
      ],
    }),
  ],
})
class Country extends Model { static table = 'countries' }
class Project extends Model { static table = 'projects' }
class Sector extends Model { static table = 'sectors' }

function device() {
  const adapter = new LokiJSAdapter({
    schema,
    useWebWorker: false,
    useIncrementalIndexedDB: true, // unused: the memory adapter below is the store
    _testLokiAdapter: new LokiMemoryAdapter(),
  })
  return new Database({ adapter, modelClasses: [Country, Project, Sector] })
}

// Read-your-writes (docs/mobile.md): the position a push answers with goes with the next pull,
// so the region's replica serves it only once it has replayed that push (else the primary).
let position = null

async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }
  if (method === 'GET' && position) headers['Covenant-Min-Position'] = position
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await response.text()
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`)
  if (method === 'POST') position = response.headers.get('Covenant-Position') ?? position
  return JSON.parse(text)
}

async function sync(database) {
  await synchronize({
    database,
    sendCreatedAsUpdated: true,
    pullChanges: async ({ lastPulledAt, schemaVersion }) =>
      call('GET', `/sync?last_pulled_at=${lastPulledAt ?? 'null'}&schema_version=${schemaVersion}`),
    pushChanges: async ({ changes, lastPulledAt }) => {
      await call('POST', `/sync?last_pulled_at=${lastPulledAt}`, changes)
    },
  })
}

async function local(database, id) {
  const found = await database.get('projects').query().fetch()
  return found.find((record) => record.id === id) ?? null
}

async function onServer(id) {
  const pulled = await call('GET', '/sync?last_pulled_at=null&schema_version=1')
  return pulled.changes.projects.updated.some((raw) => raw.id === id)
}

async function create(database, name, raw) {
  let created
  await database.write(async () => {
    created = await database.get('projects').create((record) => {
      for (const [key, value] of Object.entries({ name, ...raw })) record._setRaw(key, value)
    })
  })
  return created
}

const result = {}

// 1. Created on the device, synced, deleted on the device, synced: the delete wins.
{
  const database = device()
  await sync(database)
  const record = await create(database, `WDB delete ${randomUUID().slice(0, 8)}`, {
    description: '', sector_id: 'energy', country_code: 'KEN', budget_usd: 1200000,
    status: 'active', impact_score: 3, progress: 10,
  })
  await sync(database)
  const afterCreate = await onServer(record.id)
  await database.write(async () => record.markAsDeleted())
  await sync(database)
  result.deleteWins = {
    id: record.id,
    onServerAfterCreate: afterCreate,
    onServerAfterDelete: await onServer(record.id),
    onDeviceAfterDelete: (await local(database, record.id)) !== null,
  }
}

// 2. Created without a status (WatermelonDB stores ""): the push succeeds, the default applies.
{
  const database = device()
  await sync(database)
  const record = await create(database, `WDB no status ${randomUUID().slice(0, 8)}`, {
    description: '', sector_id: 'health', country_code: 'KEN', budget_usd: 900000,
  })
  let error = null
  try {
    await sync(database)
    await sync(database)
  } catch (exc) {
    error = String(exc)
  }
  const synced = await local(database, record.id)
  result.unsetStatus = {
    id: record.id,
    error,
    status: synced ? synced._raw.status : null,
    localStatus: synced ? synced._raw._status : null,
  }
}

result.logged = logged
process.stdout.write(JSON.stringify(result), () => process.exit(0)) // Loki keeps timers alive
