//! The console's words in Chinese (the default) and English.

/// A page language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// 简体中文.
    Zh,
    /// English.
    En,
}

impl Lang {
    /// `zh` or `en`, as `<html lang>` and the switch form spell it.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    /// The language a switch form names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "zh" | "zh-CN" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
}

/// (key, 中文, English).
const WORDS: &[(&str, &str, &str)] = &[
    ("title", "终端证书管理控制台", "Terminal CA console"),
    ("overview", "概览", "Overview"),
    ("terminals", "终端", "Terminals"),
    ("revocation", "吊销与审批", "Revocation"),
    ("audit", "审计", "Audit"),
    ("principals", "主体", "Principals"),
    ("alerts", "告警", "Alerts"),
    ("signed_in_as", "当前身份", "Signed in as"),
    ("logout", "退出", "Sign out"),
    ("switch_lang", "English", "中文"),
    ("total", "终端总数", "Terminals in total"),
    ("by_state", "按状态", "By state"),
    ("by_class", "按类别", "By class"),
    ("by_manufacturer", "按厂商", "By manufacturer"),
    (
        "per_hour",
        "最近 48 小时每小时签发证书与完成写入的终端",
        "Certificates issued and terminals provisioned per hour, last 48 hours",
    ),
    ("station", "写入站", "Station"),
    ("issued", "签发", "issued"),
    ("provisioned", "写入", "provisioned"),
    ("audit_status", "审计链", "Audit chain"),
    ("chain_ok", "完整", "verified"),
    (
        "verified_at",
        "整条审计链校验于（每分钟在后台重新校验）",
        "Whole chain verified at (again in the background each minute)",
    ),
    ("verify_now", "立即校验整条链", "Verify the whole chain now"),
    (
        "verification_running",
        "整条审计链正在后台校验，结果稍后显示",
        "The whole chain is being verified in the background; the result shows on a later page",
    ),
    ("chain_broken", "已损坏", "BROKEN"),
    ("entries", "条记录", "entries"),
    ("checkpoints", "已验证的签名检查点", "signed checkpoints verified"),
    ("last_checkpoint", "最新检查点覆盖到第", "newest checkpoint covers entries up to"),
    ("no_checkpoint_key", "服务器未配置审计密钥：仅哈希链", "the server has no audit key: hash chain only"),
    (
        "alerts_not_configured",
        "未配置：告警来自车队服务（fleet-server）。请以 --fleet URL --fleet-tls-ca PEM 启动控制台。",
        "Not configured: alerts come from the fleet service (fleet-server); start the console with --fleet URL --fleet-tls-ca PEM.",
    ),
    ("freshness", "吊销信息时效（CRL / OCSP）", "Revocation freshness (CRL / OCSP)"),
    ("this_update", "生成时间", "thisUpdate"),
    ("next_update", "下次更新", "nextUpdate"),
    ("age", "已过去", "Age"),
    ("fresh", "有效", "fresh"),
    ("stale", "已过期", "STALE"),
    ("open_alerts_by_rule", "按规则统计的未处理告警", "Open alerts by rule"),
    ("rule", "规则", "Rule"),
    ("first_seen", "首次", "First seen"),
    ("last_seen", "最近", "Last seen"),
    ("occurrences", "次数", "Occurrences"),
    ("source_address", "来源地址", "Source address"),
    ("alert_action", "处置", "Action taken"),
    ("open", "未处理", "open"),
    ("acknowledged_by", "已确认，确认人", "acknowledged by"),
    ("show_all", "包括已确认的", "Include acknowledged"),
    ("evidence", "证据", "Evidence"),
    ("acknowledge", "确认告警", "Acknowledge"),
    ("note", "备注", "Note"),
    (
        "relocation_map",
        "上报位置与参考位置（北向上，本地等距投影，无地图服务）",
        "Reported position against the reference location (north up, local equirectangular, no map service)",
    ),
    ("reference", "参考位置", "reference"),
    ("reported", "上报位置", "reported"),
    ("radius", "半径", "radius"),
    ("state", "状态", "State"),
    ("class", "类别", "Class"),
    ("manufacturer", "厂商", "Manufacturer"),
    ("model", "型号", "Model"),
    ("lot", "批次", "Lot"),
    ("serial", "序列号", "Serial"),
    ("serial_prefix", "序列号前缀", "Serial prefix"),
    ("certificate", "证书", "Certificate"),
    ("any", "全部", "any"),
    ("search", "查询", "Search"),
    ("next_page", "下一页", "Next page"),
    ("older_entries", "更早的审计记录", "Older audit entries"),
    ("none", "（无）", "(none)"),
    ("download_pem", "下载 PEM", "Download PEM"),
    ("cert_status", "证书状态", "Certificate status"),
    ("revoked_at", "吊销时间", "Revoked at"),
    ("reason", "原因", "Reason"),
    ("activations", "激活记录", "Activations"),
    ("institution", "机构", "Institution"),
    ("position", "位置", "Position"),
    ("operator", "操作员", "Operator"),
    ("time", "时间", "Time"),
    (
        "audit_of_terminal",
        "该终端及其证书的审计记录（按目标索引，各取最新 1000 条）",
        "Its and its certificates' audit entries (indexed by target, newest 1,000 of each)",
    ),
    ("provisioning", "写入记录", "Provisioning record"),
    ("revoke_one", "吊销证书", "Revoke the certificate"),
    ("revoke", "吊销", "Revoke"),
    ("bulk", "批量吊销申请（需第二位管理员批准）", "Bulk revocation request (a second administrator approves)"),
    ("covers", "该条件当前覆盖的有效证书数", "Active certificates this filter covers now"),
    ("preview", "计算覆盖数量", "Count what it covers"),
    ("request", "提交申请", "Submit the request"),
    ("approvals", "待审批队列", "Approvals queue"),
    ("approve", "批准", "Approve"),
    ("reject", "拒绝", "Reject"),
    ("requested_by", "申请人", "Requested by"),
    ("what", "内容", "What"),
    ("id", "编号", "ID"),
    (
        "dual_unavailable",
        "双人控制不可用：有效管理员不足两位",
        "Dual control unavailable: fewer than two active administrators",
    ),
    ("verify_result", "验证结果", "Verification"),
    ("actor", "主体", "Actor"),
    ("action", "操作", "Action"),
    ("target", "对象", "Target"),
    ("outcome", "结果", "Outcome"),
    ("detail", "详情", "Detail"),
    ("filter", "筛选", "Filter"),
    ("last_n", "最近条数", "Newest entries"),
    ("name", "名称", "Name"),
    ("role", "角色", "Role"),
    ("last_activity", "最近活动", "Last activity"),
    (
        "principals_note",
        "所有主体（仅管理员可见）。最近活动：其在整个审计日志中的最新一条记录（按操作者索引）。",
        "Every principal (administrators only). Last activity: its newest entry in the whole audit log (indexed by actor).",
    ),
    ("disable", "停用", "Disable"),
    ("disabled", "已停用", "disabled"),
    ("enabled", "有效", "enabled"),
    ("pending", "待批准", "pending approval"),
    ("created_by", "创建者", "Created by"),
    ("done", "已完成", "Done"),
    ("refused", "CA 拒绝了该请求", "The CA refused the request"),
    ("not_offered", "当前角色无权查看此内容", "This identity's role may not see this"),
    ("times_in", "时间按", "Times in UTC"),
];

/// The word for `key` in `lang` (the key itself when missing, so a gap shows rather than hides).
pub fn t(lang: Lang, key: &'static str) -> &'static str {
    WORDS.iter().find(|(k, _, _)| *k == key).map_or(key, |(_, zh, en)| if lang == Lang::Zh { zh } else { en })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_unique_and_translated() {
        let mut keys: Vec<_> = WORDS.iter().map(|(k, _, _)| *k).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(n, keys.len(), "duplicate key");
        for (k, zh, en) in WORDS {
            assert!(!zh.is_empty() && !en.is_empty(), "{k}");
        }
        assert_eq!(t(Lang::Zh, "overview"), "概览");
        assert_eq!(t(Lang::En, "overview"), "Overview");
        assert_eq!(t(Lang::En, "no-such-key"), "no-such-key");
    }
}
