/**
 * The TypeScript types CrunchDAO's coordinator webapp reads a coordinator node's report API with,
 * quoted from github.com/crunchdao/coordinator-webapp at 0ff892d1563562bfd7bd4c6208bbd6a179d7f4f1
 * (each block names its file). Verbatim, except:
 * - types the files derive from zod schemas (ColumnType, FormatType) are written out from those
 *   schemas (packages/leaderboard/src/application/schemas/createLeaderboardSchema.ts and
 *   packages/leaderboard/src/utils/number-formatter.ts);
 * - GaugeConfiguration and the widgets' chart configurations come from @crunchdao/chart, which is
 *   not on the public npm registry: they are `unknown` here.
 * The "Responses" block at the end names what each path answers, from the webapp's calls.
 *
 * tests/api/reference/generate-schema.sh turns this file into reference-schema.json (with
 * ts-json-schema-generator); tests/api/test_reference_contract.py validates the API's answers
 * against it.
 */

// --- apps/platform/src/modules/checkpoint/domain/nodeTypes.ts ---------------------------------
export type NodeCheckpointStatus =
  | "PENDING"
  | "SUBMITTED"
  | "CLAIMABLE"
  | "PAID";

export interface NodeCruncherReward {
  cruncher_index: number;
  reward_pct: number; // frac64: 1_000_000_000 = 100%
}

export interface NodeProviderReward {
  provider: string;
  reward_pct: number;
}

export interface NodeEmission {
  crunch: string;
  cruncher_rewards: NodeCruncherReward[];
  compute_provider_rewards: NodeProviderReward[];
  data_provider_rewards: NodeProviderReward[];
}

export interface NodeRankedEntry {
  model_id: string;
  model_name?: string;
  cruncher_name?: string;
  rank: number;
  prediction_count?: number;
  snapshot_count?: number;
  result_summary?: Record<string, number>;
}

export interface NodeCheckpoint {
  id: string;
  period_start: string;
  period_end: string;
  status: NodeCheckpointStatus;
  entries: NodeEmission[];
  meta: {
    snapshot_count?: number;
    model_count?: number;
    ranking?: NodeRankedEntry[];
  };
  created_at: string;
  tx_hash: string | null;
  submitted_at: string | null;
}

// --- apps/starter/src/modules/feed/domain/types.ts ------------------------------------------
export type FeedSummary = {
  source: string;
  subject: string;
  kind: string;
  granularity: string;
  record_count: number;
  oldest_ts: string | null;
  newest_ts: string | null;
  watermark_ts: string | null;
  watermark_updated_at: string | null;
};

export type FeedTailRecord = {
  source: string;
  subject: string;
  kind: string;
  granularity: string;
  ts_event: string;
  ts_ingested: string;
  values: Record<string, unknown>;
  meta: Record<string, unknown>;
};

// --- apps/starter/src/modules/leaderboard/infrastructure/services.ts -------------------------
export type GetModelsResponse = {
  model_id: string;
  model_name: string;
  cruncher_name: string;
  cruncher_id: string;
  deployment_id: string;
}[];

// --- apps/platform/src/modules/metrics/domain/types.ts ---------------------------------------
export interface MetricsModelItem {
  model_id: string | number;
  model_name: string;
  cruncher_name: string;
}

// --- packages/leaderboard/src/application/schemas/createLeaderboardSchema.ts (zod, written out) --
// columnTypeSchema = z.enum(["REWARD_RANK", "PROJECT", "VALUE", "USERNAME"])
export type ColumnType = "REWARD_RANK" | "PROJECT" | "VALUE" | "USERNAME";
// formatTypeSchema = z.union([z.literal("percentage"), z.literal("integer"), z.literal("compact"),
//                             z.literal("number"), z.string().regex(/^decimal-\d+$/)])
/** @pattern ^(percentage|integer|compact|number|decimal-\d+)$ */
export type FormatType = string;
// @crunchdao/chart (not public)
export type GaugeConfiguration = unknown;

// --- packages/leaderboard/src/domain/types.ts -------------------------------------------------
export type LeaderboardPosition = Record<string, unknown>;
export type ProjectConfiguration = {
  type: "model";
  statusProperty?: string;
};
export type NativeConfiguration = GaugeConfiguration | ProjectConfiguration;
export type LeaderboardColumn = {
  id: number;
  type: ColumnType;
  property: string;
  format: FormatType | null;
  displayName: string;
  tooltip: string | null;
  nativeConfiguration: NativeConfiguration | null;
  order: number;
};
export type Leaderboard = LeaderboardPosition[];

// --- packages/metrics/src/domain/types.ts (chart configurations from @crunchdao/chart: unknown) --
export type LineChartConfiguration = unknown;
export type MatrixConfiguration = unknown;
export type MetricType = "CHART" | "IFRAME";

export type BaseDefinition = {
  id: number;
  type: MetricType;
  displayName: string;
  tooltip?: string | null;
  order: number;
  endpointUrl: string;
};

export type LineChartDefinition = BaseDefinition & {
  nativeConfiguration: LineChartConfiguration;
};

export type GaugeDefinition = BaseDefinition & {
  nativeConfiguration: GaugeConfiguration;
};

export type MatrixDefinition = BaseDefinition & {
  nativeConfiguration: MatrixConfiguration;
};

export type IframeChartDefinition = BaseDefinition;

export type Widget =
  | LineChartDefinition
  | GaugeDefinition
  | MatrixDefinition
  | IframeChartDefinition;


// --- apps/starter/src/app/api/_lib/reportSchema.ts -------------------------------------------
export type ReportSchemaResponse = {
  schema_version?: string;
  leaderboard_columns?: LeaderboardColumn[];
  metrics_widgets?: Widget[];
};

// --- Responses: what each path answers, as the webapp's calls type it ----------------------------
// GET /reports/checkpoints (useGetNodeCheckpoints: proxyGet<NodeCheckpoint[]>)
export type CheckpointsResponse = NodeCheckpoint[];
// GET /reports/checkpoints/{id} (the checkpoint a settlement reads)
export type CheckpointResponse = NodeCheckpoint;
// GET /reports/checkpoints/{id}/emission
export type EmissionResponse = NodeEmission;
// GET /reports/leaderboard (useGetLeaderboard: proxyGet<Leaderboard>)
export type LeaderboardResponse = Leaderboard;
// GET /reports/models (getModelList: GetModelsResponse; the platform's useGetModels: MetricsModelItem[])
export type ModelsResponse = GetModelsResponse;
export type MetricsModelsResponse = MetricsModelItem[];
// GET /reports/feeds (getFeeds: FeedSummary[]) and /reports/feeds/tail (getFeedsTail: FeedTailRecord[])
export type FeedsResponse = FeedSummary[];
export type FeedsTailResponse = FeedTailRecord[];
// GET /reports/schema (fetchReportSchema), /reports/schema/leaderboard-columns, /reports/schema/metrics-widgets
export type SchemaResponse = ReportSchemaResponse;
export type LeaderboardColumnsResponse = LeaderboardColumn[];
export type MetricsWidgetsResponse = Widget[];
