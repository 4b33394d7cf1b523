// Alert when a message reaches the poison queue.
//
// Why a log alert and not a metric alert: Azure Storage queue metrics (QueueMessageCount) are
// per account, without a queue-name dimension, and are emitted about hourly, so a metric alert
// cannot tell the poison queue from the busy events queue.
//
// What it keys on: the app's own telemetry. Every time the archive function parks a message in
// the poison queue itself (failure_class permanent, retries-exhausted, unreadable or
// confirmation-refused) it writes
//   - an ERROR log record whose message starts with "parked in poison:" and whose
//     customDimensions carry outcome = "parked" and failure_class (traces table), and
//   - one increment of the OpenTelemetry counter altinn_mottak.parked with the same
//     failure_class (customMetrics table).
// Either one fires the rule. The two travel separately (log and metric exporters), so a lost
// batch of one does not hide a parked message. The rule does not filter on failure_class: a
// class added later still alerts.
//
// Why not the Functions host's line ("Message has reached MaxDequeueCount of N. Moving message to
// queue '<queue>-poison'."): with telemetryMode OpenTelemetry (host.json) the host's
// Microsoft.Azure.WebJobs.* log lines may never reach Application Insights. It stays as a third
// clause, a backstop for what the app cannot log itself: a worker crash or a function timeout on
// the last attempt, after which the host moves the message.

param name string
param location string
param tags object = {}

@description('Resource id of the Application Insights component the app and host log to.')
param applicationInsightsId string

@description('Name of the poison queue (shared.config.POISON_QUEUE).')
param poisonQueueName string

@description('Optional e-mail address that receives the alert. Empty: the alert shows in Azure Monitor only.')
param alertEmailAddress string = ''

param actionGroupName string

// The app's log record (severityLevel 3 = Error). `startswith` on the message the app formats
// ("parked in poison: <reason>"), outcome from the record's attributes.
var parkedLogQuery = 'traces | where severityLevel >= 3 and message startswith "parked in poison:" and tostring(customDimensions.outcome) == "parked"'

// The app's counter: one row per export interval with the increments in valueSum.
var parkedMetricQuery = 'customMetrics | where name == "altinn_mottak.parked" and valueSum > 0'

// The host's move after maxDequeueCount. `contains` with the quotes: the exact queue name.
var hostMovedQuery = 'traces | where message has "MaxDequeueCount" and message contains "\'${poisonQueueName}\'"'

// isfuzzy: a table without rows yet (a new component) must not fail the whole rule.
var poisonQuery = 'union isfuzzy=true (${parkedLogQuery}), (${parkedMetricQuery}), (${hostMovedQuery})'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmailAddress)) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'altinnpoison'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

resource poisonAlert 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    displayName: 'Altinn event parked in ${poisonQueueName}'
    description: 'The archive function parked an Altinn event in the poison queue (permanent failure, retries exhausted, unreadable message or confirmation refused), or the host moved one there. Find the reason with `altinn-mottak poison` or in Application Insights (traces where message startswith "parked in poison:"), fix the cause, then replay the poison queue with the operations CLI.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: poisonQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: empty(alertEmailAddress) ? [] : [
        resourceId('Microsoft.Insights/actionGroups', actionGroupName)
      ]
    }
  }
  dependsOn: [
    actionGroup
  ]
}

output poisonAlertId string = poisonAlert.id
