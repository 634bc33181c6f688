#!/usr/bin/env node
// Runs FIWARE's iotagent-node-lib in NGSI-LD mode against a broker: provisions a config group and an
// AirQualityObserved-like device over the agent's north port, sends measures, prints JSON lines, exits 0 on success.
//
// Settings come from the environment or from `--name=value` arguments (arguments win):
//   BROKER_URL    (--broker-url)    NGSI-LD broker base URL, e.g. http://127.0.0.1:1026          [required]
//   CONTEXT_URL   (--context-url)   @context URL the library puts into every entity it sends     [required]
//   NORTH_PORT    (--north-port)    port of the agent's provisioning API on 127.0.0.1            [default 4041]
//   TENANT        (--tenant)        fiware-service, sent as NGSILD-Tenant by the library         [default interop]
//   SUBSERVICE    (--subservice)    fiware-servicepath, sent as NGSILD-Path                      [default /]
//   DEVICE_ID     (--device-id)     device id in the agent's registry                            [default aq-sensor-001]
//   ENTITY_ID     (--entity-id)     entity id in the broker         [default urn:ngsi-ld:AirQualityObserved:interop:<device id>]
//   MEASURES_FILE (--measures-file) JSON array of measure objects {TimeInstant, no2, pm10, temperature}; default: 3 built in
//   MEASURES_MODE (--measures-mode) `single`: one update per measure; `batch`: all measures in one update
//                                   (a multi-measure, as the JSON agent sends for an array payload)  [default single]
//   AGENT_LOG_LEVEL (--log-level)   iotagent-node-lib log level, logs go to stderr               [default ERROR]
//   AGENT_TIMEOUT_MS (--timeout-ms) give up (exit 2) after this long                              [default 30000]
//
// Exit codes: 0 every step succeeded; 1 a step failed (the failing line says which); 2 timeout; 64 bad usage.
'use strict';

const fs = require('node:fs');
// logops (the library's logger) writes to stdout and logs while the library loads: send it to stderr first,
// so that stdout carries only our JSON lines.
require('logops').setStream(process.stderr);
const iotAgentLib = require('iotagent-node-lib');

const ENTITY_TYPE = 'AirQualityObserved';
const API_KEY = 'interop-apikey';
const RESOURCE = '/iot/json';

/** Default measures: three hourly readings with explicit observation times, so the test can check them. */
const DEFAULT_MEASURES = [
    { TimeInstant: '2024-03-15T10:00:00.000Z', no2: 21.5, pm10: 14, temperature: 11.2 },
    { TimeInstant: '2024-03-15T11:00:00.000Z', no2: 24, pm10: 17.5, temperature: 12.4 },
    { TimeInstant: '2024-03-15T12:00:00.000Z', no2: 22.25, pm10: 16, temperature: 13.1 }
];

/** Reads `--name=value` arguments over the environment variables of the same meaning. */
function readSettings(argv, env) {
    const args = {};
    for (const arg of argv) {
        const match = /^--([a-z-]+)=(.*)$/s.exec(arg);
        if (!match) {
            throw new Error(`unrecognised argument ${JSON.stringify(arg)} (expected --name=value)`);
        }
        args[match[1]] = match[2];
    }
    const pick = (flag, variable, fallback) => args[flag] ?? env[variable] ?? fallback;
    const deviceId = pick('device-id', 'DEVICE_ID', 'aq-sensor-001');
    const settings = {
        brokerUrl: pick('broker-url', 'BROKER_URL', undefined),
        contextUrl: pick('context-url', 'CONTEXT_URL', undefined),
        northPort: Number(pick('north-port', 'NORTH_PORT', '4041')),
        tenant: pick('tenant', 'TENANT', 'interop'),
        subservice: pick('subservice', 'SUBSERVICE', '/'),
        deviceId,
        entityId: pick('entity-id', 'ENTITY_ID', `urn:ngsi-ld:${ENTITY_TYPE}:interop:${deviceId}`),
        measuresFile: pick('measures-file', 'MEASURES_FILE', undefined),
        measuresMode: pick('measures-mode', 'MEASURES_MODE', 'single'),
        logLevel: pick('log-level', 'AGENT_LOG_LEVEL', 'ERROR'),
        timeoutMs: Number(pick('timeout-ms', 'AGENT_TIMEOUT_MS', '30000'))
    };
    if (!settings.brokerUrl || !settings.contextUrl) {
        throw new Error('BROKER_URL (--broker-url) and CONTEXT_URL (--context-url) are required');
    }
    if (!Number.isInteger(settings.northPort) || settings.northPort <= 0 || settings.northPort > 65535) {
        throw new Error(`NORTH_PORT must be a TCP port, got ${JSON.stringify(settings.northPort)}`);
    }
    if (!['single', 'batch'].includes(settings.measuresMode)) {
        throw new Error(`MEASURES_MODE must be single or batch, got ${JSON.stringify(settings.measuresMode)}`);
    }
    settings.brokerUrl = settings.brokerUrl.replace(/\/+$/, '');
    return settings;
}

/** One JSON line per thing done, on stdout; the library's own logs go to stderr. */
function report(event, details) {
    process.stdout.write(JSON.stringify({ event, ...details }) + '\n');
}

/** The library configuration: NGSI-LD towards the broker, in-memory registry, north port on loopback. */
function agentConfig(settings) {
    const brokerUrl = new URL(settings.brokerUrl);
    return {
        logLevel: settings.logLevel,
        contextBroker: {
            url: settings.brokerUrl,
            host: brokerUrl.hostname,
            port: brokerUrl.port,
            ngsiVersion: 'ld',
            jsonLdContext: settings.contextUrl
        },
        server: {
            host: '127.0.0.1',
            port: settings.northPort,
            // Library defaults, spelled out: no valueType/@type decoration of values.
            ldSupport: { null: true, datasetId: true, merge: false, dataType: 'none' }
        },
        deviceRegistry: { type: 'memory' },
        types: {},
        service: settings.tenant,
        subservice: settings.subservice,
        providerUrl: `http://127.0.0.1:${settings.northPort}`,
        deviceRegistrationDuration: 'P1M',
        defaultType: ENTITY_TYPE,
        defaultResource: RESOURCE,
        // Adds observedAt (from the TimeInstant measure, or the current time) to every attribute it sends.
        timestamp: true,
        // Read by the JSON/UltraLight agents built on the library, not by the library itself: the measures
        // below are already typed JSON numbers.
        autocast: true,
        // false: measures that match no declared attribute are still sent.
        explicitAttrs: false
    };
}

/** The config group: defaults for every AirQualityObserved device of this tenant. */
function configGroup() {
    return {
        apikey: API_KEY,
        resource: RESOURCE,
        entity_type: ENTITY_TYPE,
        timestamp: true,
        explicitAttrs: false,
        attributes: []
    };
}

/** The device: measured attributes with UN/CEFACT units and a static location. */
function device(settings) {
    const unit = (code) => ({ unitCode: { type: 'Text', value: code } });
    return {
        device_id: settings.deviceId,
        entity_name: settings.entityId,
        entity_type: ENTITY_TYPE,
        apikey: API_KEY,
        protocol: 'IoTA-JSON',
        transport: 'HTTP',
        timestamp: true,
        attributes: [
            { object_id: 'no2', name: 'no2', type: 'Number', metadata: unit('GQ') },
            { object_id: 'pm10', name: 'pm10', type: 'Number', metadata: unit('GQ') },
            { object_id: 't', name: 'temperature', type: 'Number', metadata: unit('CEL') }
        ],
        static_attributes: [
            { name: 'location', type: 'geo:json', value: { type: 'Point', coordinates: [-8.6291, 41.1579] } }
        ]
    };
}

/** POSTs a provisioning request to the agent's north port; resolves on 201, rejects with the answer otherwise. */
async function provision(settings, path, body) {
    const response = await fetch(`http://127.0.0.1:${settings.northPort}${path}`, {
        method: 'POST',
        headers: {
            'Content-Type': 'application/json',
            'fiware-service': settings.tenant,
            'fiware-servicepath': settings.subservice
        },
        body: JSON.stringify(body)
    });
    const text = await response.text();
    if (response.status !== 201) {
        throw new Error(`POST ${path} answered ${response.status}: ${text}`);
    }
    return response.status;
}

/** Node-callback API of the library as promises. */
function promised(fn, ...args) {
    return new Promise((resolve, reject) => {
        fn(...args, (error, result) => (error ? reject(error) : resolve(result)));
    });
}

/** Turns a measure object into the library's attribute list, as the IoTA-JSON agent does (object_id → value). */
function measureAttributes(measure) {
    const renamed = { temperature: 't' };
    return Object.entries(measure).map(([name, value]) => ({
        name: renamed[name] ?? name,
        type: name === 'TimeInstant' ? 'DateTime' : 'Number',
        value
    }));
}

function describeError(error) {
    return { name: error.name, message: error.message, code: error.code, details: error.details };
}

async function run(settings) {
    const measures = settings.measuresFile
        ? JSON.parse(fs.readFileSync(settings.measuresFile, 'utf8'))
        : DEFAULT_MEASURES;

    await promised(iotAgentLib.activate, agentConfig(settings));
    report('activated', {
        broker: settings.brokerUrl,
        context: settings.contextUrl,
        northPort: settings.northPort,
        tenant: settings.tenant,
        subservice: settings.subservice
    });

    let step = 'provision-group';
    try {
        await provision(settings, '/iot/groups', { groups: [configGroup()] });
        report('group-provisioned', { apikey: API_KEY, resource: RESOURCE, entityType: ENTITY_TYPE });

        step = 'provision-device';
        await provision(settings, '/iot/devices', { devices: [device(settings)] });
        report('device-provisioned', { deviceId: settings.deviceId, entityId: settings.entityId });

        const registered = await promised(
            iotAgentLib.getDevice,
            settings.deviceId,
            API_KEY,
            settings.tenant,
            settings.subservice
        );
        if (settings.measuresMode === 'batch') {
            // A multi-measure: the library sends one upsert whose entities all carry the same id.
            step = 'measure-batch';
            await promised(
                iotAgentLib.update,
                registered.name,
                registered.type,
                API_KEY,
                measures.map(measureAttributes),
                registered
            );
            report('measures-sent', { entityId: registered.name, count: measures.length, measures });
        }
        for (const [index, measure] of settings.measuresMode === 'single' ? measures.entries() : []) {
            step = `measure-${index}`;
            await promised(
                iotAgentLib.update,
                registered.name,
                registered.type,
                API_KEY,
                measureAttributes(measure),
                registered
            );
            report('measure-sent', { entityId: registered.name, index, measure });
        }
    } catch (error) {
        report('failed', { step, error: describeError(error) });
        await promised(iotAgentLib.deactivate).catch(() => undefined);
        return 1;
    }
    await promised(iotAgentLib.deactivate);
    report('done', { measures: measures.length });
    return 0;
}

function main() {
    let settings;
    try {
        settings = readSettings(process.argv.slice(2), process.env);
    } catch (error) {
        report('usage-error', { error: error.message });
        process.exit(64);
    }
    const timer = setTimeout(() => {
        report('timeout', { afterMs: settings.timeoutMs });
        process.exit(2);
    }, settings.timeoutMs);
    timer.unref();
    run(settings).then(
        (code) => process.exit(code),
        (error) => {
            report('failed', { step: 'activate', error: describeError(error) });
            process.exit(1);
        }
    );
}

main();
